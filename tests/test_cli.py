"""End to end through nerfstudio's own commands: ns-train, ns-eval, ns-render, ns-export, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, FAST, run


@pytest.fixture(scope="module")
def trained_run(tiny_capture, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    proc = run(["ns-train", "mclnf-city-tiny", "--data", str(tiny_capture), "--output-dir", str(out),
                "--timestamp", "run", "--pipeline.steps-per-block", "15", *FAST])
    run_dir = out / "cli" / "mclnf-city-tiny" / "run"
    return run_dir, proc.stdout + proc.stderr


def test_train_prints_partition_and_writes_report(trained_run):
    run_dir, log = trained_run
    assert "Block partition" in log and "stream #" in log
    manifest = json.loads((run_dir / "city" / "manifest.json").read_text())
    assert all(b["status"] in ("done", "empty") for b in manifest["blocks"].values())
    report = json.loads((run_dir / "city" / "report" / "metrics.json").read_text())
    assert report["mean"]["psnr"] > 8.0  # far above 0 of a broken render, not a quality claim
    assert (run_dir / "city" / "partition.json").exists()
    assert "city report" in log
    # The city box is said in words and drawn, and its report is kept with the city.
    assert "city box (city frame, scene units)" in log and (run_dir / "city_bounds.png").stat().st_size > 1000
    assert manifest["info"]["bounds"]["source"] == "sparse points"


def test_ns_eval(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "eval.json"
    proc = run(["ns-eval", "--load-config", str(run_dir / "config.yml"), "--output-path", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results["psnr"] > 8.0 and 0.0 < results["ssim"] <= 1.0
    # no AlexNet weights on disk: LPIPS is reported unavailable, never downloaded
    assert "lpips" not in results and "LPIPS unavailable" in proc.stdout + proc.stderr


def test_a_run_with_lpips_weights_on_disk_scores_or_says_why_not(tiny_capture, lpips_weights, tmp_path):
    """With AlexNet's weights in the hub cache (as for anyone who ran nerfacto online), test
    views too small for AlexNet get no LPIPS and a reason; the run never dies of a metric."""
    run(["ns-train", "mclnf-city-tiny", "--data", str(tiny_capture), "--output-dir", str(tmp_path),
         "--timestamp", "run", "--pipeline.steps-per-block", "4", *FAST])
    run_dir = tmp_path / "cli" / "mclnf-city-tiny" / "run"
    report = json.loads((run_dir / "city" / "report" / "metrics.json").read_text())
    assert report["lpips"].startswith("skipped on images under 31 px") and "lpips_alex" not in report["mean"]
    out = tmp_path / "eval.json"
    run(["ns-eval", "--load-config", str(run_dir / "config.yml"), "--output-path", str(out)])
    assert "lpips_alex" not in json.loads(out.read_text())["results"]


def test_ns_render_interpolate(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "fly.mp4"
    run(["ns-render", "interpolate", "--load-config", str(run_dir / "config.yml"), "--output-path", str(out),
         "--interpolation-steps", "2", "--frame-rate", "4"])
    assert out.exists() and out.stat().st_size > 1000


def test_ns_export_pointcloud(trained_run, tmp_path):
    from plyfile import PlyData

    run_dir, _ = trained_run
    run(["ns-export", "pointcloud", "--load-config", str(run_dir / "config.yml"), "--output-dir", str(tmp_path),
         "--num-points", "500"])
    ply = PlyData.read(str(tmp_path / "point_cloud.ply"))
    assert ply["vertex"].count > 100


def test_help_lists_our_options():
    proc = run(["ns-train", "mclnf-city", "--help"], timeout=120)
    assert "--pipeline.steps-per-block" in proc.stdout and "Training steps of each block" in proc.stdout
    for option in ("--pipeline.prior", "--pipeline.meta.continual", "--pipeline.fisher.sampling",
                   "--pipeline.fisher.loss-weighting", "--pipeline.fisher.uniform-fraction",
                   "--pipeline.up", "--pipeline.height-range", "--pipeline.ground-extent", "--pipeline.depth-probe"):
        assert option in proc.stdout, option


def _manifest(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_resume_after_sigkill(tiny_capture, tmp_path):
    """Killed during block k, resumed with --load-dir: earlier blocks are kept, not retrained."""
    steps = 30
    args = ["ns-train", "mclnf-city-tiny", "--data", str(tiny_capture), "--output-dir", str(tmp_path),
            "--pipeline.steps-per-block", str(steps), "--steps-per-save", "5", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    run_dir = tmp_path / "cli" / "mclnf-city-tiny" / "first"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([str(BIN / args[0]), *args[1:], "--timestamp", "first"], stdout=log, stderr=subprocess.STDOUT, env=env)
    manifest_path = run_dir / "city" / "manifest.json"
    deadline = time.time() + 600
    killed_in = None
    try:
        while time.time() < deadline and proc.poll() is None:
            m = _manifest(manifest_path)
            ckpts = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
            if m and ckpts:
                stream = m["stream_order"]
                status = [m["blocks"][str(b)]["status"] for b in stream]
                step = int(ckpts[-1].stem.split("-")[1])
                if status[0] == "done" and status[1] == "active" and step > steps + 5:
                    killed_in = stream[1]
                    break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert killed_in is not None, (tmp_path / "first.log").read_text()[-3000:]
    before = _manifest(manifest_path)
    first = str(before["stream_order"][0])
    assert before["blocks"][first]["status"] == "done"

    proc = run([*args, "--timestamp", "second", "--load-dir", str(run_dir / "nerfstudio_models")])
    after = _manifest(manifest_path)
    assert all(after["blocks"][str(b)]["status"] == "done" for b in after["stream_order"])
    # block 0 of the stream: same file, same checksum, same finish time -> not retrained
    for key in ("sha256", "finished_at", "file"):
        assert after["blocks"][first][key] == before["blocks"][first][key]
    assert f"block {first} (" not in proc.stdout, "a finished block was started again"
    assert f"block {killed_in} (" in proc.stdout or f"block {killed_in} done" in proc.stdout
    second_ckpt = sorted((tmp_path / "cli" / "mclnf-city-tiny" / "second" / "nerfstudio_models").glob("*.ckpt"))
    assert int(second_ckpt[-1].stem.split("-")[1]) == len(after["stream_order"]) * steps - 1


def test_ns_viewer_serves_a_trained_city(trained_run):
    """ns-viewer loads the city (store, checkpoint) on CPU and serves the viewer page."""
    import socket
    import urllib.request

    run_dir, _ = trained_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([str(BIN / "ns-viewer"), "--load-config", str(run_dir / "config.yml"),
                             "--viewer.websocket-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, page = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
        assert page and b"<html" in page.lower()
    finally:
        proc.kill()
        proc.wait()

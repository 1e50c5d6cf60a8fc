"""tools/bench/city.py, speed.py, train.py and process.py run (smoke mode) and write their results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def smoke(tool: str, *args: str) -> None:
    """Run `tools/bench/<tool>.py --smoke ARGS`; fail the test with its output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / f"{tool}.py"), "--smoke", *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def finite(record: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(record[key], (int, float)) and math.isfinite(record[key]), (key, record[key])


def test_bench_city_smoke(tmp_path):
    out = tmp_path / "out"
    smoke("city", "--out-dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == {"nerfacto joint", "nerfacto sequential", "mclnf random init", "mclnf meta init",
                                     "mclnf FIM only", "mclnf meta + FIM"}
    for row in summary["table"].values():
        finite(row, "test_psnr_mean", "wall_s_median", "cpu_s_median")
    for run in summary["runs"]:
        assert run["stream"] and run["blocks"], run["method"]
        finite(run, "test_psnr", "wall_s", "cpu_s")
    for name in ("mclnf random init", "mclnf meta init", "mclnf FIM only", "mclnf meta + FIM"):
        assert summary["table"][name]["renders_alone_bit_identical"] is True  # finished blocks never change
    adaptation = summary["adaptation"]
    assert set(adaptation["curves"]) == {"random init", "meta-learned prior", "random init, appearance learned",
                                         "meta-learned prior, appearance learned"}
    for curve in adaptation["curves"].values():
        assert set(curve["psnr"]) == {"0", "2"}
        finite(curve["psnr"], "0", "2")
    for picture in ("adaptation.png", "forgetting.png", "wall_time.png"):
        assert (out / picture).stat().st_size > 1000


def test_bench_speed_smoke(tmp_path):
    out = tmp_path / "bench_speed.json"
    smoke("speed", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["smoke"]
    assert set(result["summary"]["equal_steps"]) == {"nerfacto", "mclnf-city"}
    assert set(result["summary"]["equal_wall_time"]) == {"nerfacto@64", "mclnf-city@64"}
    for phase in result["summary"].values():
        for row in phase.values():
            finite(row, "rays_per_step", "train_rays_per_s", "test_psnr", "test_ssim", "eval_rays_per_s", "peak_rss_mb", "steps", "train_s")
            assert row["steps"] >= 1 and row["train_rays_per_s"] > 0
    # Phase 2 sizes mclnf-city's stream by a calibration stream, at least 2 steps per block (rays/s windows).
    mclnf = result["runs"]["equal_wall_time"]["mclnf-city@64"][0]
    assert mclnf["steps_per_block"] >= 2 and len(mclnf["calibrated_s_per_step"]) == mclnf["blocks"]


def test_bench_train_smoke(tmp_path):
    out = tmp_path / "bench_train.json"
    smoke("train", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["smoke"] and set(result["results"]) == {"nerfacto (torch)", "mclnf-city", "mclnf-city-tiny 16 blocks"}
    for row in result["results"].values():
        finite(row, "s_per_step", "rays_per_s", "peak_rss_mb", "wall_s")
        assert row["s_per_step"] > 0 and row["peak_rss_mb"] > 0


def test_bench_process_smoke(tmp_path):
    out = tmp_path / "bench_process.json"
    smoke("process", "--out", str(out))
    result = json.loads(out.read_text())
    door = result["lund_door"]
    assert door["run"]["images_in"] == 12 and door["run"]["registered"] >= 3
    finite(door["run"], "wall_seconds", "mean_reprojection_error")
    assert door["accuracy"]["compared"] == door["run"]["registered"]
    finite(door["accuracy"], "max_rotation_deg", "mean_rotation_deg", "max_centre_error_fraction", "mean_centre_error_fraction", "scene_extent")
    assert isinstance(door["accuracy"]["passes"], bool)
    street = result["lund_street"]["run"]
    assert street["images_in"] == 8 and street["registered"] >= 3
    finite(street, "wall_seconds", "mean_reprojection_error", "points")
    assert not list(tmp_path.glob("bench_process_*")), "the work directory is left behind"

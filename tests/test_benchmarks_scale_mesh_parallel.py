"""tools/bench/scale.py, mesh.py and parallel.py run (smoke mode) and write sane results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def run_smoke(name: str, out: Path, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / f"{name}.py"), "--smoke", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_scale_smoke(tmp_path):
    result = run_smoke("scale", tmp_path / "out" / "scale.json", "--work", str(tmp_path / "work"))
    assert {"command", "city", "stream", "render", "full_preset", "rss_samples"} <= result.keys()
    s = result["stream"]
    assert s["blocks"] == 4 and s["grid"] == [2, 2] and s["train_images"] > 0
    for key in ("setup_s", "train_s", "report_s", "s_per_step_median", "s_per_step_mean", "block_edge_m", "finish_s_median"):
        assert positive(s[key]), (key, s[key])
    assert len(s["steps"]) == 4 * s["steps_per_block"]
    assert all(positive(s["steps_first_vs_last_blocks"][k]["s_per_step_median"]) for k in ("first", "last"))
    assert len(s["rss_mb"]["after_block"]) == 4 and all(positive(r["rss_mb"]) for r in s["rss_mb"]["after_block"])
    assert positive(s["rss_mb"]["peak_sampled"]) and positive(s["rss_mb"]["peak_sampled_incl_render"])
    assert positive(s["disk"]["block_file_mean_bytes"]) and positive(s["disk"]["manifest_bytes"])
    # Three views, each rendered with a cache smaller than the city and, as the control, as large.
    render = result["render"]
    assert {r["cache"] for r in render} == {3, 4} and len(render) == 6
    for row in render:
        assert row["city_blocks"] == 4 and row["pixels"] == 16 * 12
        for state in ("cold", "warm"):
            assert positive(row[state]["ms"]) and row[state]["reads"] >= 0 and row[state]["blocks_touched"] >= 1
    assert all(r["warm"]["reads"] == 0 for r in render if r["cache"] == 4)  # the whole city fits: nothing read twice
    full = result["full_preset"]
    assert positive(full["s_per_step_median"]) and positive(full["block_tensor_bytes"]["hash_grid"])


def test_bench_mesh_smoke(tmp_path):
    result = run_smoke("mesh", tmp_path / "out" / "mesh.json", "--work-dir", str(tmp_path / "work"))
    assert {"command", "train", "config", "capture", "city_box_metres", "block_width_metres", "runs", "png", "seconds"} <= result.keys()
    assert positive(result["train"]["seconds"]) and positive(result["block_width_metres"])
    assert len(result["runs"]) == 1
    run = result["runs"][0]
    assert positive(run["export"]["faces"]) and positive(run["export"]["vertices"]) and run["export"]["blocks"] == [0, 1, 2, 3]
    assert Path(run["ply"]).stat().st_size > 0
    assert set(run["metrics"]) == {"0.5", "1.0", "2.0"}
    for m in run["metrics"].values():
        assert positive(m["chamfer"]) and positive(m["accuracy_mean"]) and positive(m["completeness_mean"])
        assert all(0.0 <= m[k] <= 1.0 for k in ("precision", "recall", "fscore"))
        assert 0.0 <= m["above_ground"]["fscore"] <= 1.0
    assert set(run["controls"]) == {"shifted_by_one_block", "random_triangles", "ground_plane_only"}
    for control in run["controls"].values():
        assert set(control) == set(run["metrics"]) and all(positive(m["chamfer"]) for m in control.values())
    assert [Path(p).name for p in result["png"]] == ["mesh.png", "mesh_gt.png"]
    assert all(Path(p).parent == tmp_path / "out" and Path(p).stat().st_size > 0 for p in result["png"])


def test_bench_parallel_smoke(tmp_path):
    result = run_smoke("parallel", tmp_path / "out" / "parallel.json", "--work", str(tmp_path / "work"))
    assert {"command", "cpu_count", "runs", "speedup_same_waves", "largest_block_difference"} <= result.keys()
    assert set(result["runs"]) == {"1 process, waves of 1", "1 process, waves of 2", "2 processes"}
    for r in result["runs"].values():
        assert positive(r["wall_s"]) and positive(r["test_psnr"])
        assert Path(r["store"]).is_relative_to(tmp_path / "work")
    assert positive(result["speedup_same_waves"])
    diff = result["largest_block_difference"]
    assert math.isfinite(diff) and diff >= 0

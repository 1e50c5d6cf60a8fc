"""tools/bench/memory.py runs (smoke mode) and reports what it measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_memory_smoke(tmp_path):
    out = tmp_path / "memory.json"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "memory.py"), "--smoke", "--work", str(tmp_path / "w"),
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    capture, mclnf = result["capture"], result["mclnf_city"]
    assert capture["images"] > 40 and capture["pixels"] == capture["images"] * 40 * 30
    assert mclnf["blocks_trained"] >= 2 and len(mclnf["loads"]) >= mclnf["blocks_trained"]
    assert 0 < mclnf["peak_rss_mb"] and 0 < mclnf["setup_s"] and 0 < mclnf["s_per_step_median"]
    assert all(r["pixels"] > 0 and r["images"] > 0 for r in mclnf["loads"])
    # a block's pixel file holds runs of pixels (8 bytes each): fewer bytes than an id per pixel
    assert 0 < mclnf["pixel_file_bytes_max"] < 4 * mclnf["block_pixels"]["max"] and mclnf["pixel_file_bytes_max"] % 8 == 0
    assert result["nerfacto"]["peak_rss_mb_sampled"] > 0
    # the projection scales what was measured: a block's pool at about 7 bytes (int32 id + RGB) per pixel it holds
    proj = result["projection"]
    per_pixel = proj["measured_inputs"]["pool_bytes_per_pixel"]
    assert 7 <= per_pixel < 8 and proj["measured_inputs"]["blocks_per_pixel"] > 0
    assert proj["block_pool_gb"] == pytest.approx(proj["block_pixels"] * per_pixel / 1e9) and proj["blocks"] == 10_000
    for key in ("ram_per_worker_gb", "disk_blocks_total_gb", "pixel_index_total_gb", "setup_cpu_hours", "gpu_hours_total"):
        assert proj[key] > 0, key

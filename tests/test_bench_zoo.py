"""The zoo benchmark runs (smoke mode), and its validation split never holds a test image."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT
from mclnf_city.splits import validation_capture


def test_validation_capture_drops_every_test_image(tmp_path):
    capture = tmp_path / "c"
    (capture / "images").mkdir(parents=True)
    frames = [{"file_path": f"images/frame_{i:05d}.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}
              for i in reversed(range(20))]  # nerfstudio sorts by name: so must the split
    (capture / "transforms.json").write_text(json.dumps({"frames": frames}))
    out = validation_capture(capture, tmp_path / "v")
    kept = {f["file_path"] for f in json.loads((out / "transforms.json").read_text())["frames"]}
    test = {f"images/frame_{i:05d}.png" for i in range(0, 20, 8)}
    assert len(kept) == 17 and not kept & test
    assert (out / "images").resolve() == (capture / "images").resolve()


def _bench_zoo(tmp_path, *extra):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "zoo.py"), "--smoke", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_bench_zoo_smoke(tmp_path):
    _bench_zoo(tmp_path)
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    methods = {r["method"] for r in result["runs"]}
    assert methods == {"mclnf-city", "nerfacto"}
    for r in result["runs"]:
        assert math.isfinite(r["test_psnr"]) and r["steps"] >= 1 and r["train_s"] > 0
        assert max(r["test_colour_errors"]) == r["test_colour_error_worst"] >= 0.0
    assert "| orbit_tower |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "renders.jpg").stat().st_size > 1000

    # --append: more seeds of one method join the table; the earlier runs stay
    _bench_zoo(tmp_path, "--append", "--methods", "mclnf-city", "--seeds", "1")
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in result["runs"]) == [("mclnf-city", 0), ("mclnf-city", 1), ("nerfacto", 0)]
    assert len(result["commands"]) == 2 and result["summary"]["orbit_tower"]["mclnf-city"]["seeds"] == [0, 1]

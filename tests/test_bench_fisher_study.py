"""The FIM-NeRF study runs (smoke mode): every variant it names is a valid setting, and the
verdict follows its rule."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import fisher_study
from common import parse_setting
from conftest import ROOT
from mclnf_city.fisher import FisherConfig


def test_every_variant_is_a_valid_fisher_setting():
    for name, settings in fisher_study.VARIANTS.items():
        config = FisherConfig()
        for text in settings:
            path, value = parse_setting(text)
            assert path.startswith("pipeline.fisher."), (name, path)
            field = path.split(".")[-1]
            assert hasattr(config, field), (name, field)
            setattr(config, field, value)
        config.check()
        assert config.enabled == (name != "off"), name


def test_verdict_needs_the_mean_gain_and_no_capture_far_behind():
    def cell(psnr):
        return {"psnr": psnr}

    summary = {"60.0": {
        "off": {"a": cell(20.0), "b": cell(20.0)},
        "good": {"a": cell(20.5), "b": cell(20.2)},
        "uneven": {"a": cell(21.5), "b": cell(19.7)},
        "small": {"a": cell(20.2), "b": cell(20.2)},
    }}
    v = fisher_study.verdict(summary)
    assert v["good"]["wins"] and math.isclose(v["good"]["mean_gain_db"], 0.35)
    assert not v["uneven"]["wins"] and not v["small"]["wins"]


def test_bench_fisher_study_smoke(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "fisher_study.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in result["runs"]} == {"off", "sampling_corrected"}
    for r in result["runs"]:
        assert math.isfinite(r["test_psnr"]) and r["steps"] >= 1
    assert "sampling_corrected" in result["verdict"]
    assert (out / "psnr_vs_time.png").stat().st_size > 0
    assert "| sampling_corrected |" in (out / "results.md").read_text()
    # The untimed mode: each capture trains the steps per block the timed `off` run reached; a
    # --prior variant starts every block from the given θ_shared file.
    prior = next((ROOT / "mclnf_city" / "priors").glob("blockfield-L12-*.pt"))
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "fisher_study.py"), "--smoke", "--out", str(again),
                           "--work", str(tmp_path / "work"), "--steps-from", str(out / "results.json"), "--steps-like", "off",
                           "--jobs", "2", "--prior", f"meta={prior}", "--variants", "off", "sampling_corrected", "prior_meta"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timed_off = {r["capture"]: r["steps_per_block"] for r in result["runs"] if r["variant"] == "off"}
    untimed = json.loads((again / "results.json").read_text())["runs"]
    assert {r["variant"] for r in untimed} == {"off", "sampling_corrected", "prior_meta"}
    log = (again / "runs" / "prior_meta_seed0_orbit_tower" / "logs" / "orbit_tower_mclnf-city_seed0.log").read_text()
    assert f"θ_shared: prior file {prior}" in log, log[-2000:]
    for r in untimed:
        assert r["steps_per_block"] == timed_off[r["capture"]] and r["steps_like"] == "off"
    assert "steps per block `off` reached" in (again / "results.md").read_text()


def test_heatmap_scores_every_pixel_of_a_photo(tiny_capture, tmp_path):
    result = fisher_study.heatmap("tiny", tiny_capture, steps=4, out=tmp_path)
    w, h = result["size"]
    from PIL import Image

    assert Image.open(tmp_path / "score_heatmap.jpg").size == (3 * w, h)
    assert result["score_mean"] > 0 and 0.1 <= result["score_share_of_top_10_percent_pixels"] <= 1.0


def test_downscaled_capture_keeps_every_ray(tiny_capture, tmp_path):
    """The copy's cameras, at the copy's pixel centres, cast the rays of the original's cameras at the same
    relative image positions: images and intrinsics are scaled together."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from PIL import Image

    from common import downscaled_capture

    small = downscaled_capture(tiny_capture, tmp_path / "small", max_size=20)
    meta = json.loads((small / "transforms.json").read_text())
    sizes = {Image.open(small / f["file_path"]).size for f in meta["frames"]}
    assert max(max(s) for s in sizes) == 20
    cams = [NerfstudioDataParserConfig(data=d, eval_mode="all").setup().get_dataparser_outputs("train").cameras
            for d in (tiny_capture, small)]
    assert len(cams[0]) == len(cams[1])
    big_w, small_w = int(cams[0].width[0]), int(cams[1].width[0])
    assert small_w < big_w
    # Directions through the image centre and a corner region agree to within a pixel of the small image.
    for u, v in ((0.5, 0.5), (0.1, 0.9)):
        rays = []
        for c in cams:
            w, h = float(c.width[0]), float(c.height[0])
            coords = torch.tensor([[v * h, u * w]])
            rays.append(c.generate_rays(camera_indices=0, coords=coords).directions.reshape(-1))
        pixel_angle = 1.0 / float(cams[1].fx[0])
        assert torch.allclose(rays[0], rays[1], atol=2 * pixel_angle)
    assert (small / "transforms.json").stat().st_mtime == downscaled_capture(tiny_capture, small, 20).joinpath("transforms.json").stat().st_mtime


def test_score_agreement_compares_both_scores_of_the_same_rays(tiny_capture, tmp_path):
    result = fisher_study.agreement("tiny", tiny_capture, steps=2, out=tmp_path, rays=20)
    assert [row["step"] for row in result["checkpoints"]] == [0, 2]
    for row in result["checkpoints"]:
        assert -1.0 <= row["spearman"] <= 1.0 and 0.0 <= row["top_10_percent_overlap"] <= 1.0
    assert json.loads((tmp_path / "score_agreement_tiny.json").read_text()) == result


def test_rank_correlation():
    a = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert math.isclose(fisher_study.rank_correlation(a, a * 10 + 1), 1.0)
    assert math.isclose(fisher_study.rank_correlation(a, -a), -1.0)
    assert math.isclose(fisher_study.rank_correlation(a, torch.tensor([1.0, 2.0, 4.0, 3.0])), 0.4)


def test_zero_steps_of_heatmap_or_agreement_are_refused(capsys):
    for flag in ("--heatmap-steps", "--agreement-steps"):
        with pytest.raises(SystemExit) as exit:
            fisher_study.main([flag, "0", "--heatmap", "x=/nonexistent"])
        assert exit.value.code == 2
        assert f"{flag} 0" in capsys.readouterr().err

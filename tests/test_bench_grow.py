"""The grow benchmark runs (smoke mode), and every run it compares is scored on the same test views,
none of which any of them trains on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from mclnf_city.splits import check_split, choose_test_files, split_lists


def test_one_test_set_for_the_grown_capture_and_its_old_part():
    grown = [f"images/frame_{i:05d}.png" for i in reversed(range(20))]  # nerfstudio sorts by name: so must the choice
    old = grown[::3]
    test = choose_test_files(grown)
    assert test == [f"images/frame_{i:05d}.png" for i in (0, 8, 16)]
    for capture in (grown, old):
        split = split_lists(capture, test)
        assert split["val_filenames"] == split["test_filenames"] == sorted(set(test) & set(capture))
        assert not set(split["train_filenames"]) & set(test)
        assert sorted(split["train_filenames"] + split["test_filenames"]) == sorted(capture)


def test_check_split_refuses_a_run_that_trains_on_a_test_view():
    def dataset(names):
        return SimpleNamespace(_dataparser_outputs=SimpleNamespace(image_filenames=[f"/c/images/{n}" for n in names]))

    def run(train, test):
        """A stand-in pipeline: only the image lists of its data manager."""
        return SimpleNamespace(datamanager=SimpleNamespace(train_dataset=dataset(train), eval_dataset=dataset(test)))

    chosen = ["a.png", "e.png"]
    record = check_split({"old": run(["b.png"], ["a.png"]), "grown": run(["b.png", "c.png"], chosen)}, chosen)
    assert record["test_files"] == chosen and record["runs"]["old"] == {"train_files": ["b.png"], "test_files": ["a.png"]}
    with pytest.raises(AssertionError, match="trains on test views"):
        check_split({"leaky": run(["a.png", "b.png"], ["e.png"])}, chosen)
    with pytest.raises(AssertionError, match="not among the chosen test views"):
        check_split({"other": run(["b.png"], ["a.png", "c.png"])}, chosen)


def test_nerfstudio_parses_the_split_lists(tmp_path):
    """The dataparser the city trains with takes the lists over its own every-8th split."""
    from PIL import Image

    from mclnf_city.datamanager import CityDataManagerConfig

    (tmp_path / "images").mkdir()
    frames = []
    for i in range(12):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / f"frame_{i:05d}.png")
        pose = np.eye(4)
        pose[:3, 3] = [i, i % 3, 1.0]
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": pose.tolist()})
    capture = [f["file_path"] for f in frames]
    test = ["images/frame_00003.png", "images/frame_00005.png"]  # not what the interval split would pick
    meta = {"fl_x": 8.0, "fl_y": 8.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "frames": frames, **split_lists(capture, test)}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    config = CityDataManagerConfig().dataparser
    config.data, config.load_3D_points = tmp_path, False
    parser = config.setup()
    names = {split: sorted(p.name for p in parser.get_dataparser_outputs(split=split).image_filenames) for split in ("train", "val", "test")}
    assert names["val"] == names["test"] == ["frame_00003.png", "frame_00005.png"]
    assert len(names["train"]) == 10 and not set(names["train"]) & set(names["test"])


def test_bench_grow_smoke(tmp_path):
    out = tmp_path / "grow.json"
    # one thread: on tensors this small a second one costs more than it gives (2-3x the wall time on shared cores)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "grow.py"), "city", "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["grown_city"]["new_blocks"]
    assert result["old_store_unchanged"] and result["old_blocks_linked_byte_identical"] and result["old_blocks_solo_renders_bit_identical"]
    test = result["split"]["test_files"]
    runs = result["split"]["runs"]
    old, grown = runs["old_city"], runs["grown_city"]
    # both cities are scored on the grown capture's test views, the whole chosen set
    assert sorted(r["view"] for r in result["per_view"]) == sorted(grown["test_files"]) == test
    assert all(math.isfinite(r[k]) for r in result["per_view"] for k in ("old_city", "grown_city"))
    # the old capture's test views are the same images: the chosen ones among its photos
    old_frames = set(old["train_files"]) | set(old["test_files"])
    assert old_frames < set(grown["train_files"]) | set(grown["test_files"])
    assert old["test_files"] and sorted(old["test_files"]) == sorted(set(test) & old_frames)
    for run in (old, grown):
        assert not set(test) & set(run["train_files"])

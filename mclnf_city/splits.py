"""Test views held out of training, chosen as ns-train chooses them, for comparisons between runs.

nerfstudio's interval split takes every 8th frame by file name. A run on part of a capture
(an old city, a grown one) gets the same test images as explicit split lists in its
transforms.json; a validation capture leaves the test images out altogether, for tuning that
never sees them; and `check_split` fails when a run trains on a test view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

TEST_INTERVAL = 8  # as the data manager's own interval split, so a comparison tests what ns-train would


def choose_test_files(file_paths: Sequence[str], every: int = TEST_INTERVAL) -> List[str]:
    """Every `every`-th frame by file name: what nerfstudio's interval split picks (it sorts frames by name)."""
    return sorted(file_paths)[::every]


def split_lists(file_paths: Sequence[str], test_files: Sequence[str]) -> Dict[str, List[str]]:
    """transforms.json split lists for a capture holding `file_paths`: the test files among them are its
    val and test split (ns-train evaluates on val, ns-eval on test), all other frames train."""
    test = set(test_files)
    held = sorted(p for p in file_paths if p in test)
    return {"train_filenames": sorted(p for p in file_paths if p not in test), "val_filenames": held, "test_filenames": held}


def image_names(dataset) -> List[str]:
    return [Path(n).name for n in dataset._dataparser_outputs.image_filenames]


def check_split(runs: Dict, test_files: Sequence[str]) -> Dict:
    """The train and test images of each run (name -> pipeline) as its data manager loaded them; fails if
    a run trains on a test view or tests on an image that is not one."""
    test = set(test_files)
    record = {"every": TEST_INTERVAL, "test_files": sorted(test), "runs": {}}
    for name, pipe in runs.items():
        train, evals = image_names(pipe.datamanager.train_dataset), image_names(pipe.datamanager.eval_dataset)
        leaked = sorted(test.intersection(train))
        assert not leaked, f"{name} trains on test views {leaked}"
        strays = sorted(set(evals) - test)
        assert not strays, f"{name} tests on {strays}, which are not among the chosen test views"
        record["runs"][name] = {"train_files": train, "test_files": evals}
    return record


def validation_capture(capture: Path, out: Path) -> Path:
    """The capture without its test images (every 8th frame): links to its images and a new transforms.json."""
    meta = json.loads((capture / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f["file_path"])  # nerfstudio's order
    kept = [f for i, f in enumerate(frames) if i % TEST_INTERVAL != 0]
    out.mkdir(parents=True, exist_ok=True)
    for entry in capture.iterdir():
        if entry.name not in ("transforms.json",) and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry.resolve())
    (out / "transforms.json").write_text(json.dumps({**meta, "frames": kept}, indent=1))
    return out

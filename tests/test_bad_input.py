"""Bad captures fail early with a message naming the file or block; nothing trained is lost."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_trainer_config
from mclnf_city.capture import CaptureError
from mclnf_city.partition import PartitionError
from mclnf_city.store import StoreError


def _copy(capture: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "capture"
    shutil.copytree(capture, dst)
    return dst


def _setup(capture: Path, tmp_path: Path, **pipeline):
    config = tiny_trainer_config(capture, tmp_path / "runs", steps_per_block=5, **pipeline)
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _edit_transforms(capture: Path, edit) -> None:
    path = capture / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_missing_image_is_named(tiny_capture, tmp_path):
    cap = _copy(tiny_capture, tmp_path)
    (cap / "images" / "frame_00003.png").unlink()
    with pytest.raises(CaptureError, match=r"frame_00003\.png"):
        _setup(cap, tmp_path)


def test_unreadable_image_is_named(tiny_capture, tmp_path):
    cap = _copy(tiny_capture, tmp_path)
    (cap / "images" / "frame_00002.png").write_bytes(b"this is not a png")
    with pytest.raises(CaptureError, match=r"frame_00002\.png: cannot read image"):
        _setup(cap, tmp_path)


def test_non_finite_pose_is_named(tiny_capture, tmp_path):
    cap = _copy(tiny_capture, tmp_path)

    def nan_pose(meta):
        meta["frames"][5]["transform_matrix"][0][3] = float("nan")

    _edit_transforms(cap, nan_pose)
    with pytest.raises(CaptureError, match=r"non-finite .*frame_00005\.png"):
        _setup(cap, tmp_path)


def test_camera_far_outside_is_named(tiny_capture, tmp_path):
    cap = _copy(tiny_capture, tmp_path)

    def far_away(meta):
        meta["frames"][9]["transform_matrix"][0][3] = 1e6

    _edit_transforms(cap, far_away)
    with pytest.raises(PartitionError, match=r"frame_00009\.png"):
        _setup(cap, tmp_path)


def test_capture_too_small(tiny_capture, tmp_path):
    cap = _copy(tiny_capture, tmp_path)

    def keep_two(meta):
        meta["frames"] = meta["frames"][:1]

    _edit_transforms(cap, keep_two)
    with pytest.raises(CaptureError, match=r"transforms\.json: 'frames' holds 1 frame\(s\); a capture to partition needs at least"):
        _setup(cap, tmp_path)


def test_colmap_layout_problems_are_named(tmp_path):
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from mclnf_city.capture import check_capture

    capture = tmp_path / "colmap_capture"
    (capture / "images").mkdir(parents=True)
    Image.new("RGB", (2000, 1500)).save(capture / "images" / "a.jpg")
    with pytest.raises(CaptureError, match=r"colmap/sparse/0: no COLMAP model"):
        check_capture(ColmapDataParserConfig(), capture)
    (capture / "colmap" / "sparse" / "0").mkdir(parents=True)
    (capture / "colmap" / "sparse" / "0" / "cameras.txt").write_text("")
    # over 1600 px: nerfstudio would prompt on stdin; we stop first, naming the image and the fix
    with pytest.raises(CaptureError, match=r"a\.jpg: images are 2000x1500.*--downscale-factor 1"):
        check_capture(ColmapDataParserConfig(), capture)
    check_capture(ColmapDataParserConfig(downscale_factor=1), capture)
    (capture / "images_2").mkdir()
    check_capture(ColmapDataParserConfig(), capture)
    with pytest.raises(CaptureError, match="capture not found"):
        check_capture(ColmapDataParserConfig(), tmp_path / "nowhere")


def test_blocks_without_rays_are_skipped(tiny_capture, tmp_path, capsys):
    trainer = _setup(tiny_capture, tmp_path, grid=(5, 5), min_rays_per_block=8000)
    pipeline = trainer.pipeline
    empty = [b for b in range(25) if pipeline.store.status(b) == "empty"]
    assert empty, "expected some blocks below the ray threshold"
    assert not set(empty) & set(pipeline.stream)
    assert "skipped" in capsys.readouterr().out
    assert "training rays" in pipeline.store.block(empty[0])["reason"]


def test_store_of_another_capture_is_refused(tiny_capture, tmp_path):
    trainer = _setup(tiny_capture, tmp_path)
    store_dir = trainer.pipeline.store.root
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["info"]["num_train_images"] += 1
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    config = tiny_trainer_config(tiny_capture, tmp_path / "runs2", steps_per_block=5, store_dir=store_dir)
    config.save_config()
    with pytest.raises(StoreError, match="trained on"):
        config.setup(local_rank=0, world_size=1).setup()
    # the store was not touched
    assert json.loads((store_dir / "manifest.json").read_text()) == manifest


def test_prior_of_another_architecture_is_refused(tiny_capture, tmp_path):
    bad = tmp_path / "prior.pt"
    torch.save({"encoding.hash_table": torch.zeros(3, 2)}, bad)
    with pytest.raises(ValueError, match=r"prior .*prior\.pt"):
        _setup(tiny_capture, tmp_path, prior=bad)


def _snapshot(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _break(cap: Path, kind: str) -> str:
    """Damage a copy of the capture in one way; the pattern its error must match."""
    frames = json.loads((cap / "transforms.json").read_text())["frames"]
    if kind == "truncated png":
        path = cap / frames[2]["file_path"]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return r"frame_00002\.png: cannot read image"
    if kind == "truncated jpeg":
        path = cap / frames[2]["file_path"]
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=90)
        data = path.with_suffix(".jpg").read_bytes()
        path.with_suffix(".jpg").write_bytes(data[: len(data) * 3 // 4])
        path.unlink()
        _edit_transforms(cap, lambda m: m["frames"][2].update(file_path=frames[2]["file_path"].replace(".png", ".jpg")))
        return r"frame_00002\.jpg: cannot read image .*truncated"
    if kind == "size differs":
        path = cap / frames[6]["file_path"]
        Image.open(path).resize((20, 15)).save(path)
        return r"frame_00006\.png: image is 20x15 but its camera \(w, h\) says 40x30"
    if kind == "nan focal":
        _edit_transforms(cap, lambda m: m.update(fl_x=float("nan")))
        return r"transforms\.json: 'fl_x' of images/frame_00000\.png is nan"
    if kind == "zero focal":
        _edit_transforms(cap, lambda m: m["frames"][4].update(fl_y=0.0))
        return r"transforms\.json: 'fl_y' of images/frame_00004\.png is 0\.0; it must be a finite number > 0"
    if kind == "duplicate file_path":
        _edit_transforms(cap, lambda m: m["frames"][5].update(file_path=frames[3]["file_path"]))
        return r"transforms\.json: file_path named by more than one frame: images/frame_00003\.png"
    if kind == "path escaping":
        shutil.copy(cap / frames[1]["file_path"], cap.parent / "elsewhere.png")
        _edit_transforms(cap, lambda m: m["frames"][1].update(file_path="../elsewhere.png"))
        return r"transforms\.json: file_path outside the capture folder .*: \.\./elsewhere\.png"
    if kind == "empty frames":
        _edit_transforms(cap, lambda m: m.update(frames=[]))
        return r"transforms\.json: 'frames' holds 0 frame\(s\)"
    if kind in ("ply with nan", "ply with 0 points"):
        from plyfile import PlyData, PlyElement

        ply = cap / json.loads((cap / "transforms.json").read_text())["ply_file_path"]
        vertex = PlyData.read(str(ply))["vertex"].data.copy()
        if kind == "ply with nan":
            vertex["x"][7] = float("nan")
        else:
            vertex = vertex[:0]
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(ply))
        return r"sparse_pc\.ply: 1 of \d+ points have a non-finite" if kind == "ply with nan" else r"sparse_pc\.ply: holds 0 points"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated png", "truncated jpeg", "size differs", "nan focal", "zero focal", "duplicate file_path",
                                  "path escaping", "empty frames", "ply with nan", "ply with 0 points"])
def test_a_damaged_capture_is_refused_before_anything_is_written(tiny_capture, tmp_path, kind):
    cap = _copy(tiny_capture, tmp_path)
    pattern = _break(cap, kind)
    before = _snapshot(cap)
    with pytest.raises(CaptureError, match=pattern):
        _setup(cap, tmp_path)
    assert _snapshot(cap) == before
    assert not list((tmp_path / "runs").rglob("manifest.json")) and not list((tmp_path / "runs").rglob("*.pt"))


def test_a_video_without_frames_is_refused_and_no_output_is_made(tmp_path, capsys):
    import cv2

    video = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    writer.release()  # a container with no frame in it
    from mclnf_city.capture.process import main

    out = tmp_path / "capture"
    assert main([str(video), str(out)]) == 1
    captured = capsys.readouterr()
    assert re.search(r"empty\.mp4: (no frames could be decoded|OpenCV cannot open)", captured.out + captured.err)
    assert not out.exists()

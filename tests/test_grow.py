"""A growing city: new photos registered into a capture's frame, new blocks trained from the city's
prior with old blocks untouched, and blocks re-captured as new versions (in-process training)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_CITY, tiny_trainer_config
from mclnf_city.capture import CaptureError
from mclnf_city.grow import GrowError, grow_partition
from mclnf_city.capture.process import ProcessOptions, process
from mclnf_city.pose_accuracy import compare_poses, poses_from_transforms
from mclnf_city.scenes.make_city import generate_city
from mclnf_city.store import DONE, CityStore
from mclnf_city.trainer import setup_trainer

DOOR = ROOT / "tests" / "data" / "lund_door_small"
DOOR_MORE = ROOT / "tests" / "data" / "lund_door_more"
STEPS = 8  # per block: the tests check bookkeeping and bits, not quality
SPLIT_X = 26.0  # the old city: cameras and points west of this street (make_city metres)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*.pt"))}


# ----------------------------------------------------------------- captures
def _write_points(src: Path, dst: Path, keep) -> None:
    from plyfile import PlyData, PlyElement

    vertex = PlyData.read(str(src))["vertex"].data
    PlyData([PlyElement.describe(vertex[keep(vertex)], "vertex")]).write(str(dst))


def _capture(src: Path, dst: Path, frames, meta: dict, keep_points=None) -> Path:
    """A capture of some of `src`'s frames (images linked), with `meta`'s other keys."""
    (dst / "images").mkdir(parents=True)
    for f in frames:
        os.link(src / f["file_path"], dst / f["file_path"])
    if keep_points is None:
        shutil.copy(src / "sparse_pc.ply", dst / "sparse_pc.ply")
    else:
        _write_points(src / "sparse_pc.ply", dst / "sparse_pc.ply", keep_points)
    (dst / "transforms.json").write_text(json.dumps({**meta, "frames": frames}, indent=1))
    return dst


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """A 3x2-block generated city, seen as an old capture (west of SPLIT_X), the same grown by the
    eastern photos (marked capture 1, as --register-into marks them), and a re-capture of the west
    (the western photos again as the newest capture, 2)."""
    root = tmp_path_factory.mktemp("grow_captures")
    full = generate_city(root / "full", seed=5, progress=False, verbose=False, **{**TINY_CITY, "blocks_x": 3})
    meta = json.loads((full / "transforms.json").read_text())
    frames = meta.pop("frames")
    west = [f for f in frames if f["transform_matrix"][0][3] < SPLIT_X]
    old = _capture(full, root / "old", west, meta, keep_points=lambda v: v["x"] < SPLIT_X)
    grown_frames = [f if f in west else {**f, "capture": 1} for f in frames]
    grown = _capture(full, root / "grown", grown_frames, meta)
    again = [{**f, "capture": 2} if f in west else f for f in grown_frames]
    recaptured = _capture(full, root / "recaptured", again, meta)
    return old, grown, recaptured


def camera_by_name(pipeline, name: str):
    for dataset in (pipeline.datamanager.eval_dataset, pipeline.datamanager.train_dataset):
        names = [Path(n).name for n in dataset._dataparser_outputs.image_filenames]
        if name in names:
            i = names.index(name)
            return dataset.cameras[i : i + 1]
    raise KeyError(name)


def render_alone(pipeline, b: int, camera) -> torch.Tensor:
    """Block b alone (its region, its far field), as `CityReport.render_block_alone` renders it."""
    model = pipeline.model
    model.solo_block, was_training = b, model.training
    model.eval()
    try:
        return model.get_outputs_for_camera(camera.to(pipeline.device))["rgb"].cpu()
    finally:
        model.solo_block = None
        model.train(was_training)


@pytest.fixture(scope="module")
def old_city(captures, tmp_path_factory):
    old, _, _ = captures
    trainer = setup_trainer(tiny_trainer_config(old, tmp_path_factory.mktemp("old_runs"), steps_per_block=STEPS))
    trainer.train()
    pipeline = trainer.pipeline
    eval_names = [Path(n).name for n in pipeline.datamanager.eval_dataset._dataparser_outputs.image_filenames]
    views = {b: [eval_names[i] for i in v] for b, v in pipeline.report.test_views_by_block().items()}
    solo = {b: {n: render_alone(pipeline, b, camera_by_name(pipeline, n)) for n in views.get(b, eval_names[:1])}
            for b in pipeline.store.done_blocks()}
    cameras = {n: camera_by_name(pipeline, n) for names in views.values() for n in names}
    store = pipeline.store.root
    return {"store": store, "files": store_files(store), "manifest": (store / "manifest.json").read_bytes(),
            "solo": solo, "cameras": cameras, "partition": pipeline.partition, "done": sorted(pipeline.store.done_blocks())}


@pytest.fixture(scope="module")
def grown_city(captures, old_city, tmp_path_factory):
    _, grown, _ = captures
    config = tiny_trainer_config(grown, tmp_path_factory.mktemp("grown_runs"), steps_per_block=STEPS, grow_city=old_city["store"])
    trainer = setup_trainer(config)
    trainer.train()
    return trainer


def test_grow_trains_only_new_blocks_and_leaves_old_ones_untouched(old_city, grown_city):
    pipeline = grown_city.pipeline
    store = CityStore(pipeline.store.root)
    n_old = old_city["partition"].num_blocks
    grow = store.manifest["grow"]
    new = grow["new_blocks"]
    assert new and new == list(range(n_old, pipeline.partition.num_blocks)), grow
    # only the new blocks trained: the run's iterations are theirs
    assert pipeline.stream == [b for b in grow["train_order"] if store.status(b) != "empty"]
    assert set(pipeline.stream) <= set(new) | set(grow["revived_blocks"]) and pipeline.stream
    assert grown_city.config.max_num_iterations == len(pipeline.stream) * STEPS
    assert all(store.status(b) == DONE for b in pipeline.stream)
    # the old city's store: not a byte changed
    assert store_files(old_city["store"]) == old_city["files"]
    assert (old_city["store"] / "manifest.json").read_bytes() == old_city["manifest"]
    # the grown store holds the old block files byte for byte, under the same ids and entries
    for b in old_city["done"]:
        rel = store.block(b)["file"]
        assert sha(store.root / rel) == old_city["files"][rel] == store.block(b)["sha256"]
    prior = store.manifest["prior"]["file"]
    assert sha(store.root / prior) == old_city["files"][prior]
    # same ids, same boxes, same height range; new blocks are grid neighbours
    old_part, part = old_city["partition"], pipeline.partition
    assert torch.equal(part.regions()[:n_old], old_part.regions())
    assert part.z_range == old_part.z_range and part.overlap == old_part.overlap
    old_cells = {part.cell(b) for b in range(n_old)}
    for b in new:
        ix, iy = part.cell(b)
        assert any(abs(ix - cx) + abs(iy - cy) == 1 for cx, cy in old_cells | {part.cell(c) for c in new if c != b})


def test_new_blocks_start_from_the_city_prior(old_city, grown_city):
    pipeline = grown_city.pipeline
    prior = CityStore(old_city["store"]).load_prior()
    assert all(torch.equal(pipeline.model.prior[k], v) for k, v in prior.items())
    assert CityStore(pipeline.store.root).manifest["prior"] == CityStore(old_city["store"]).manifest["prior"]


def test_old_blocks_render_bit_identically_in_the_grown_city(old_city, grown_city):
    """Same cameras (bit for bit, the city's dataparser frame), same solo renders, read from the grown store."""
    pipeline = grown_city.pipeline
    pipeline.model.frozen._blocks.clear()
    for name, camera in old_city["cameras"].items():
        now = camera_by_name(pipeline, name)
        assert torch.equal(now.camera_to_worlds, camera.camera_to_worlds), name
        assert torch.equal(now.fx, camera.fx) and torch.equal(now.distortion_params, camera.distortion_params)
    for b, renders in old_city["solo"].items():
        for name, before in renders.items():
            assert torch.equal(render_alone(pipeline, b, camera_by_name(pipeline, name)), before), (b, name)
    # old blocks load with their own (smaller) appearance embedding
    b = old_city["done"][0]
    assert pipeline.model.frozen.get(b, pipeline.device).appearance.num_embeddings < pipeline.model.active.appearance.num_embeddings


def test_grown_city_report_serving_and_resume(old_city, grown_city, captures, tmp_path):
    pipeline = grown_city.pipeline
    report = json.loads((pipeline.store.root / "report" / "metrics.json").read_text())
    assert report["stream_order"] == pipeline.stream
    assert all(report["blocks"][str(b)]["renders_alone_bit_identical"] in (True, None) for b in pipeline.stream)
    # served as nerfstudio's commands load it (eval_setup, here through mclnf-export): every block, old and new
    from mclnf_city.export import export_thumbnails, load_city

    city = load_city(grown_city.config.get_base_dir() / "config.yml")
    assert city.model.done_blocks == set(city.store.done_blocks()) == set(old_city["done"]) | set(pipeline.stream)
    sheet, info = export_thumbnails(city, 16, 16, progress=False)
    assert set(info["blocks"]) == {str(b) for b in range(city.partition.num_blocks)}
    assert sheet.shape[:2] == (16 * city.partition.grid[1], 16 * city.partition.grid[0])
    # started again without --pipeline.grow-city (as a resume with --load-dir is): the store says it
    # is grown, and the capture is parsed in the city's frame
    config = copy.deepcopy(grown_city.config)
    config.pipeline.grow_city = None
    again = config.setup(local_rank=0, world_size=1)
    again.setup()
    assert again.pipeline.stream == pipeline.stream
    assert all(again.pipeline.store.status(b) == DONE for b in again.pipeline.stream)  # stored blocks are never retrained
    assert again.pipeline.store.manifest["grow"] == pipeline.store.manifest["grow"]
    name = next(iter(old_city["cameras"]))
    assert torch.equal(camera_by_name(again.pipeline, name).camera_to_worlds, old_city["cameras"][name].camera_to_worlds)


def test_recapture_keeps_the_old_version_in_service_until_the_new_one_is_stored(old_city, grown_city, captures, tmp_path):
    _, _, recaptured = captures
    base = grown_city.pipeline.store.root
    b = old_city["done"][0]
    old_entry = CityStore(base).block(b)
    config = tiny_trainer_config(recaptured, tmp_path, steps_per_block=STEPS, grow_city=base, recapture_blocks=(b,))

    # 1. killed in the middle of the re-capture: the old version stays in service
    trainer = setup_trainer(config)
    store_root = trainer.pipeline.store.root
    assert trainer.pipeline.stream == [b]
    train_step = trainer.pipeline.get_train_loss_dict

    def crash(step):
        if step == STEPS // 2:
            raise KeyboardInterrupt("simulated crash")
        return train_step(step)

    trainer.pipeline.get_train_loss_dict = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    served = CityStore(store_root)
    entry = served.block(b)
    assert entry["status"] == DONE and entry["file"] == old_entry["file"] and entry["sha256"] == old_entry["sha256"]
    assert entry["recapture"]["status"] == "active" and entry["recapture"]["version"] == 2
    assert b in served.done_blocks()
    assert sha(store_root / entry["file"]) == old_entry["sha256"]
    assert not list((store_root / "blocks").glob(f"block_{b:03d}_v2.pt"))
    # what a viewer / ns-eval of this run serves (the pipeline outside training): the old version, bit for bit
    serving = config.pipeline.setup(device="cpu", test_mode="test")
    assert b in serving.model.done_blocks
    name = Path(serving.datamanager.eval_dataset._dataparser_outputs.image_filenames[0]).name
    camera = camera_by_name(serving, name)
    assert torch.equal(render_alone(serving, b, camera), render_alone(grown_city.pipeline, b, camera_by_name(grown_city.pipeline, name)))

    # 2. the run again: the old version is served until the switch, then the new one
    trainer = setup_trainer(config)
    pipeline = trainer.pipeline
    assert pipeline.stream == [b] and b not in pipeline.model.done_blocks  # trains, from the prior
    finish = pipeline.finish_block
    seen = {}

    def finish_and_watch(block, step):
        seen["before"] = CityStore(store_root).block(block)["file"]
        finish(block, step)
        seen["after"] = CityStore(store_root).block(block)

    pipeline.finish_block = finish_and_watch
    trainer.train()
    assert seen["before"] == old_entry["file"]
    after = seen["after"]
    assert after["file"] == f"blocks/block_{b:03d}_v2.pt" and after["version"] == 2 and "recapture" not in after
    assert after["versions"][-1]["file"] == old_entry["file"] and after["versions"][-1]["sha256"] == old_entry["sha256"]
    assert sha(store_root / old_entry["file"]) == old_entry["sha256"]  # the old version is kept
    new_state = CityStore(store_root).load_block(b)
    old_state = CityStore(base).load_block(b)
    assert any(not torch.equal(new_state[k], old_state[k]) for k in old_state if k.startswith("encoding"))
    # trained on the newest photos only: its images are capture 2's
    names = [Path(n).name for n in pipeline.datamanager.train_dataset._dataparser_outputs.image_filenames]
    marks = {Path(f["file_path"]).name: f.get("capture", 0) for f in json.loads((recaptured / "transforms.json").read_text())["frames"]}
    used = new_state["image_ids"].tolist()
    assert used and all(marks[names[i]] == 2 for i in used)
    # the other blocks and the base city are untouched
    for other in old_city["done"]:
        if other != b:
            assert CityStore(store_root).block(other)["sha256"] == CityStore(base).block(other)["sha256"]


def test_grow_refuses_bad_requests(old_city, captures, tmp_path):
    _, grown, _ = captures
    with pytest.raises(GrowError, match="block 99"):
        setup_trainer(tiny_trainer_config(grown, tmp_path / "b", steps_per_block=STEPS, grow_city=old_city["store"], recapture_blocks=(99,)))
    with pytest.raises(GrowError, match="no trained city"):
        setup_trainer(tiny_trainer_config(grown, tmp_path / "c", steps_per_block=STEPS, grow_city=tmp_path / "nothing"))
    with pytest.raises(GrowError, match="needs --pipeline.grow-city"):
        setup_trainer(tiny_trainer_config(grown, tmp_path / "d", steps_per_block=STEPS, recapture_blocks=(0,)))


def test_grow_partition_appends_cells_and_keeps_the_grid():
    from mclnf_city.partition import BlockPartition

    f64 = torch.float64
    part = BlockPartition(torch.eye(3, dtype=f64), torch.zeros(3, dtype=f64), torch.tensor([0.0, 1.0, 2.0], dtype=f64),
                          torch.tensor([0.0, 1.5, 3.0], dtype=f64), (0.0, 1.0), 0.1, [0, 1, 2, 3])
    footprint = torch.tensor([[2.5, 0.5], [2.6, 0.7], [-0.5, 2.0], [-0.4, 2.2], [1.5, 1.0], [9.0, 9.0]], dtype=f64)
    grown, _ = grow_partition(part, footprint)
    assert grown.num_blocks == 6  # two cells with 2 points each; the lone far point is ignored
    assert torch.equal(grown.regions()[:4], part.regions())
    assert [grown.cell(b) for b in (4, 5)] == [(3, 0), (0, 1)]
    city = torch.tensor([[2.5, 0.5, 0.5], [-0.5, 2.0, 0.5], [0.5, 0.5, 0.5], [-0.5, 0.5, 0.5]], dtype=f64)
    assert grown.locate(city).tolist() == [4, 5, 0, -1]
    assert grown.block_of_xy(city)[3].item() in (0, 5)
    again = type(grown).from_dict(json.loads(json.dumps(grown.to_dict())))
    assert again.cells == grown.cells and torch.equal(again.regions(), grown.regions())


# ----------------------------------------------------------------- registration on real photos
def _ground_truth():
    import pycolmap

    poses = {}
    for folder in (DOOR, DOOR_MORE):
        for name, p in json.loads((folder / "ground_truth_poses.json").read_text())["poses"].items():
            w, x, y, z = p["qvec_wxyz"]
            world_from_cam = pycolmap.Rigid3d(pycolmap.Rotation3d([x, y, z, w]), np.array(p["tvec"])).inverse()
            poses[name] = (world_from_cam.rotation.matrix(), np.asarray(world_from_cam.translation))
    return poses


def _photos(folder: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in sorted(folder.glob("*.JPG")):
        shutil.copy(p, dst / p.name)
    return dst


def _options(src, out, **kw):
    return ProcessOptions(input=src, output=out, threads=1, quiet=True, **kw)


@pytest.fixture(scope="module")
def door_city(tmp_path_factory):
    root = tmp_path_factory.mktemp("door")
    city = root / "city"
    process(_options(_photos(DOOR, root / "photos"), city))
    return root, city


def test_register_door_photos_into_the_city_frame(door_city):
    root, city = door_city
    grown = root / "grown"
    summary = process(_options(_photos(DOOR_MORE, root / "more"), grown, register_into=city))
    assert summary.images_in == 4 and summary.registered == 4, summary
    old, new = (json.loads((d / "transforms.json").read_text()) for d in (city, grown))
    # old frames: same image, same pose (bit for bit), same intrinsics; the city frame kept
    for a, b in zip(old["frames"], new["frames"]):
        assert a["file_path"] == b["file_path"] and a["transform_matrix"] == b["transform_matrix"]
        assert all(b.get(k, old.get(k)) == old.get(k, a.get(k)) for k in ("fl_x", "cx", "k1", "w"))
    assert new["city_frame"] == old["city_frame"]
    added = new["frames"][len(old["frames"]):]
    assert [f["capture"] for f in added] == [1] * 4 and new["captures"][-1]["frames"] == 4
    # the COLMAP model: old poses exactly, old camera untouched
    import pycolmap

    a, b = (pycolmap.Reconstruction(str(d / "colmap" / "sparse" / "0")) for d in (city, grown))
    for i in a.reg_image_ids():
        assert np.array_equal(a.image(i).cam_from_world().matrix(), b.image(i).cam_from_world().matrix())
    assert b.num_reg_images() == 12
    # all 12 against the ground truth, after a similarity fit (320 px photos: the bounds of test_process)
    acc = compare_poses(poses_from_transforms(grown / "transforms.json"), _ground_truth())
    assert acc["compared"] == 12
    assert acc["max_rotation_deg"] < 3.0 and acc["max_centre_error_fraction"] < 0.08, acc
    # nerfstudio reads it (per-frame intrinsics now)
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    outputs = NerfstudioDataParserConfig(data=grown, train_split_fraction=1.0).setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == 12


def _no_leftovers(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_registration_bad_input_is_named_and_leaves_nothing(door_city, tmp_path):
    from PIL import Image

    _, city = door_city
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(320, 214, 3), dtype=np.uint8)).save(noise / f"n{i}.png")
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"only 0 of 3 new image\(s\) registered.*n0\.png"):
        process(_options(noise, out, register_into=city))
    assert _no_leftovers(out)
    with pytest.raises(CaptureError, match=r"DSC_0001\.JPG.*--name-prefix"):
        process(_options(_photos(DOOR, tmp_path / "same"), out, register_into=city))
    assert _no_leftovers(out)
    with pytest.raises(CaptureError, match=r"colmap/sparse/0: no COLMAP model"):
        process(_options(noise, out, register_into=ROOT / "assets" / "demo_city"))
    assert _no_leftovers(out)
    assert (city / "transforms.json").exists()  # the capture registered into is never changed


def test_registration_when_the_capture_keypoints_differ(door_city, tmp_path, monkeypatch):
    """Keypoints extracted again that differ from the model's (another SIFT build, say): the
    capture's points are triangulated again with its poses fixed, and the photos still register."""
    from mclnf_city.capture import register

    _, city = door_city
    monkeypatch.setattr(register, "keypoints_match_model", lambda *a: False)
    grown = tmp_path / "grown"
    summary = process(_options(_photos(DOOR_MORE, tmp_path / "more"), grown, register_into=city))
    assert summary.registered == 4 and summary.mapping["kept_capture_points"] is False
    old, new = (json.loads((d / "transforms.json").read_text()) for d in (city, grown))
    assert [f["transform_matrix"] for f in new["frames"][:len(old["frames"])]] == [f["transform_matrix"] for f in old["frames"]]
    acc = compare_poses(poses_from_transforms(grown / "transforms.json"), _ground_truth())
    assert acc["max_rotation_deg"] < 3.0 and acc["max_centre_error_fraction"] < 0.08, acc


def test_city_made_before_growing_existed_gets_its_frame_from_its_capture(old_city, captures, tmp_path):
    """No recorded frame: the old capture is parsed again and checked against the old run's
    dataparser_transforms.json; the result is the frame the city records today."""
    from mclnf_city.grow import FRAME_KEY, _frame_of_old_capture

    old, grown, _ = captures
    recorded = CityStore(old_city["store"]).manifest["info"][FRAME_KEY]
    legacy = tmp_path / "run" / "city"
    legacy.mkdir(parents=True)
    manifest = json.loads((old_city["store"] / "manifest.json").read_text())
    del manifest["info"][FRAME_KEY]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(old_city["store"].parent / "dataparser_transforms.json", legacy.parent / "dataparser_transforms.json")
    config = tiny_trainer_config(grown, tmp_path / "runs", steps_per_block=STEPS).pipeline
    frame = _frame_of_old_capture(CityStore(legacy), config)
    assert frame["transform"] == recorded["transform"] and frame["scale"] == recorded["scale"] and frame["reproducible"]
    # other dataparser options than the old run's: refused, naming the file
    config.datamanager.dataparser.orientation_method = "none"
    with pytest.raises(GrowError, match="dataparser_transforms.json"):
        _frame_of_old_capture(CityStore(legacy), config)

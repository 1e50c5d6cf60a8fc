"""mclnf-process: real photos -> a capture nerfstudio parses; bad input -> clear errors, no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, ROOT, run
from mclnf_city.capture import CaptureError, check_transforms_json
from mclnf_city.capture.frame import umeyama
from mclnf_city.capture.images import extract_video_frames
from mclnf_city.capture.process import ProcessOptions, build_parser, main, process
from mclnf_city.capture.sfm import choose_matching
from mclnf_city.pose_accuracy import compare_poses, poses_from_transforms

DOOR = ROOT / "tests" / "data" / "lund_door_small"


def _options(src: Path, out: Path, **kw) -> ProcessOptions:
    return ProcessOptions(input=src, output=out, threads=2, quiet=True, **kw)


def _door_images(tmp_path: Path, names=None) -> Path:
    """A copy of the committed door photos (without README / ground truth)."""
    dst = tmp_path / "photos"
    dst.mkdir()
    for p in sorted(DOOR.glob("*.JPG")):
        if names is None or p.name in names:
            shutil.copy(p, dst / p.name)
    return dst


def _no_leftovers(out: Path) -> bool:
    """Neither the output nor a staging directory beside it survives a failed run."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _ground_truth():
    """Ground-truth camera-to-world rotations and centres (COLMAP axes) of the door photos."""
    import pycolmap

    meta = json.loads((DOOR / "ground_truth_poses.json").read_text())
    poses = {}
    for name, p in meta["poses"].items():
        w, x, y, z = p["qvec_wxyz"]
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d([x, y, z, w]), np.array(p["tvec"]))
        world_from_cam = cam_from_world.inverse()
        poses[name] = (world_from_cam.rotation.matrix(), np.asarray(world_from_cam.translation))
    return poses


@pytest.fixture(scope="module")
def door_capture(tmp_path_factory):
    out = tmp_path_factory.mktemp("process") / "door"
    summary = process(_options(_door_images(out.parent), out))
    return out, summary


def test_door_photos_register_and_match_ground_truth(door_capture):
    out, summary = door_capture
    assert summary.images_in == 8
    assert summary.registered >= 6, summary
    assert summary.mean_reprojection_error < 1.5
    acc = compare_poses(poses_from_transforms(out / "transforms.json"), _ground_truth())
    assert acc["compared"] == summary.registered
    # 320 px images: looser than the benchmark's targets (2 deg, 5 %) at 800 px.
    assert acc["max_rotation_deg"] < 3.0, acc
    assert acc["max_centre_error_fraction"] < 0.08, acc


def test_door_capture_layout_and_city_frame(door_capture):
    out, summary = door_capture
    meta = json.loads((out / "transforms.json").read_text())
    check_transforms_json(out)  # the project's own capture checks
    assert meta["camera_model"] == "OPENCV" and "k1" in meta and meta["w"] == 214 and meta["h"] == 320
    assert len(meta["frames"]) == summary.registered == len(list((out / "images").iterdir()))
    c2w = np.array([f["transform_matrix"] for f in meta["frames"]])
    rot = c2w[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-6)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-6)
    # City frame: origin at the mean camera centre, and cameras held upright -> their y (up) near +z.
    assert np.allclose(c2w[:, :3, 3].mean(0), 0.0, atol=1e-6)
    assert (c2w[:, 2, 1] > 0.9).all(), c2w[:, 2, 1]
    frame = meta["city_frame"]
    assert frame["scale"] == "arbitrary" and frame["up_from"] in ("cameras", "ground_plane")
    assert meta["ply_file_path"] == "sparse_pc.ply"
    assert (out / "colmap" / "sparse" / "0").is_dir() and not (out / "colmap" / "database.db").exists()


def test_door_capture_parses_in_nerfstudio(door_capture):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    out, summary = door_capture
    outputs = NerfstudioDataParserConfig(data=out, load_3D_points=True, train_split_fraction=1.0).setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == summary.registered
    assert outputs.metadata["points3D_xyz"].shape == (summary.points, 3)
    assert int(outputs.cameras.width[0]) == 214
    assert float(outputs.cameras.distortion_params[0, 0]) != 0.0  # k1 carried through


def test_ns_train_reads_the_processed_photos_through_colmap(door_capture, tmp_path):
    """Real photos -> mclnf-process -> `ns-train mclnf-city-tiny ... colmap` (nerfstudio's own
    COLMAP parser on colmap/sparse/0) -> a trained city whose test view is rendered."""
    out, summary = door_capture
    runs = tmp_path / "runs"
    run(["ns-train", "mclnf-city-tiny", "--data", str(out), "--output-dir", str(runs), "--timestamp", "run",
         "--pipeline.steps-per-block", "10", "--pipeline.grid", "1", "1", *FAST, "colmap"])
    run_dir = runs / "cli" / "mclnf-city-tiny" / "run"
    assert "ColmapDataParserConfig" in (run_dir / "config.yml").read_text()
    report = json.loads((run_dir / "city" / "report" / "metrics.json").read_text())
    assert report["test_views"] == len(range(0, summary.registered, 8))  # every 8th image
    assert report["mean"]["psnr"] > 8.0  # a render of the facade, not of nothing; not a quality claim
    render = np.asarray(Image.open(run_dir / "city" / "report" / "renders" / "test_0000.png"))
    assert render.shape[0] > 100 and render[:, render.shape[1] // 2 :].std() > 5  # the rendered half is not flat


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tgt = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    s, r, t = umeyama(src, tgt)
    assert s == pytest.approx(2.5) and np.allclose(r, rot) and np.allclose(t, [1.0, -2.0, 3.0])


def test_auto_matching_choice():
    assert choose_matching("auto", True, 100, 0)[0] == "sequential"
    assert choose_matching("auto", False, 29, 29)[0] == "spatial"
    assert choose_matching("auto", False, 20, 0)[0] == "exhaustive"
    assert choose_matching("auto", False, 300, 0)[0] == "sequential"
    with pytest.raises(CaptureError, match="GPS"):
        choose_matching("spatial", False, 10, 3)


# ----------------------------------------------------------------- bad input


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"empty: no images found"):
        process(_options(tmp_path / "empty", out))
    assert _no_leftovers(out)


def test_unreadable_image_is_named(tmp_path):
    src = _door_images(tmp_path)
    (src / "DSC_0004.JPG").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"DSC_0004\.JPG"):
        process(_options(src, out))
    assert _no_leftovers(out)


def test_video_opencv_cannot_open(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00" * 1000)
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"clip\.mp4: OpenCV cannot open"):
        process(_options(bad, out))
    assert _no_leftovers(out)


def test_images_without_overlap_give_no_model(tmp_path):
    """Independent random-noise images: nothing matches, so no model and no output."""
    src = tmp_path / "noise"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)).save(src / f"n{i}.png")
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"no model"):
        process(_options(src, out))
    assert _no_leftovers(out)


def test_mixed_sizes_refused_with_names(tmp_path):
    src = _door_images(tmp_path)
    with Image.open(src / "DSC_0002.JPG") as im:
        im.resize((160, 240)).save(src / "DSC_0002.JPG")
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"2 different sizes.*DSC_0002\.JPG is 160x240"):
        process(_options(src, out, mixed_sizes="refuse"))
    assert _no_leftovers(out)


def test_mixed_sizes_per_image_cameras(tmp_path):
    src = _door_images(tmp_path, names={f"DSC_000{i}.JPG" for i in range(1, 7)})
    with Image.open(src / "DSC_0003.JPG") as im:
        im.resize((180, 269), Image.Resampling.LANCZOS).save(src / "DSC_0003.JPG", exif=im.info.get("exif", b""))
    out = tmp_path / "out"
    summary = process(_options(src, out))
    assert summary.camera_mode == "per-image" and summary.registered >= 4
    meta = json.loads((out / "transforms.json").read_text())
    assert "fl_x" not in meta and all("fl_x" in f and "w" in f for f in meta["frames"])
    widths = {Path(f["file_path"]).name: f["w"] for f in meta["frames"]}
    assert widths.get("DSC_0003.JPG", 180) == 180 and widths.get("DSC_0001.JPG", 214) == 214


def test_existing_output_is_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CaptureError, match="already exists"):
        process(_options(DOOR, out))
    assert (out / "keep.txt").read_text() == "mine"



def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in sorted(DOOR.iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("where", ["parent", "same", "inside"])
def test_output_that_holds_or_is_the_input_is_refused_before_anything_is_touched(tmp_path, where):
    """`mclnf-process X/in X --overwrite` must not publish over (and delete) the photos."""
    src = _photos(tmp_path / "x" / "in")
    out = {"parent": tmp_path / "x", "same": src, "inside": src / "out"}[where]
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(CaptureError, match="the input"):
        process(_options(src, out, overwrite=True))
    assert sorted(p.name for p in src.iterdir()) == before
    assert not list(tmp_path.rglob(".*incomplete*"))


def test_overwrite_replaces_only_a_capture_this_tool_wrote(tmp_path):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(CaptureError, match="not a capture mclnf-process wrote"):
        process(_options(DOOR, out, overwrite=True))
    assert (out / "thesis.tex").read_text() == "mine"


def test_register_into_output_holding_the_capture_is_refused(tmp_path):
    capture = tmp_path / "city" / "capture"
    capture.mkdir(parents=True)
    (capture / "transforms.json").write_text("{}")
    with pytest.raises(CaptureError, match="--register-into capture"):
        process(_options(_photos(tmp_path / "new"), tmp_path / "city", overwrite=True, register_into=capture))
    assert (capture / "transforms.json").exists()

def test_cli_exit_codes_and_help(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out"), "--quiet"]) == 1
    assert "no images found" in capsys.readouterr().err
    help_text = build_parser().format_help()
    for option in ("--max-size", "--stride", "--blur-threshold", "--matching", "--camera-model", "--mixed-sizes", "--overwrite"):
        assert option in help_text


# ----------------------------------------------------------------- video


def _write_video(path: Path, blurry: set, n: int = 40) -> None:
    """A textured scene panning sideways; the frames in `blurry` are heavily blurred."""
    import cv2

    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.integers(0, 256, size=(60, 200), dtype=np.uint8), (800, 240), interpolation=cv2.INTER_NEAREST)
    scene = cv2.cvtColor(scene, cv2.COLOR_GRAY2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(n):
        frame = np.ascontiguousarray(scene[:, i * 10 : i * 10 + 320])
        if i in blurry:
            frame = cv2.GaussianBlur(frame, (0, 0), 6)
        writer.write(frame)
    writer.release()


def test_video_frames_stride_and_blur_filter(tmp_path):
    video = tmp_path / "walk.avi"
    blurry = {4, 12, 20}
    _write_video(video, blurry)
    stats = extract_video_frames(video, tmp_path / "frames", stride=2, blur_threshold=0.5)
    assert stats["frames_read"] == 40 and stats["candidates"] == 20
    dropped = {int(n[6:12]) for n in stats["dropped_blurry"]}
    assert dropped == blurry  # every blurred candidate, and nothing else
    kept = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert len(kept) == stats["kept"] == 17
    assert all(int(n[6:12]) % 2 == 0 and int(n[6:12]) not in blurry for n in kept)


def test_video_too_few_frames_leaves_no_output(tmp_path):
    """The video path through `process`: 2 frames are kept, too few for SfM -> clear error."""
    video = tmp_path / "short.avi"
    _write_video(video, blurry=set(), n=4)
    out = tmp_path / "out"
    with pytest.raises(CaptureError, match=r"only 2 usable image"):
        process(_options(video, out, stride=2))
    assert _no_leftovers(out)


def test_video_of_real_photos_registers_and_matches_ground_truth(tmp_path):
    """The video path end to end on real imagery: the door photos as a clip, each followed by a
    blurred copy (a shaky frame). The blur filter must drop exactly the copies, and the poses
    must match the ground truth as the photo path's do."""
    import cv2

    photos = sorted(DOOR.glob("*.JPG"))
    video = tmp_path / "door.avi"
    h, w = cv2.imread(str(photos[0])).shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    for p in photos:
        frame = cv2.imread(str(p))
        writer.write(frame)
        writer.write(cv2.GaussianBlur(frame, (0, 0), 4))
    writer.release()
    out = tmp_path / "door_video"
    # One thread: pycolmap's threaded mapping is not deterministic, and about 1 run in 5 with 2
    # threads ended at 4.9 degrees on these 8 frames (a real spread, reported, not a bound to loosen).
    summary = process(ProcessOptions(input=video, output=out, threads=1, quiet=True, stride=1, blur_threshold=0.5))
    kept = sorted(p.name for p in (out / "images").iterdir())
    assert len(kept) == len(photos) and all(int(n[6:12]) % 2 == 0 for n in kept), kept  # sharp frames only
    assert summary.registered >= 6, summary
    ours = poses_from_transforms(out / "transforms.json")
    renamed = {photos[int(Path(n).stem[6:12]) // 2].name: pose for n, pose in ours.items()}
    acc = compare_poses(renamed, _ground_truth())
    assert acc["compared"] == summary.registered
    assert acc["max_rotation_deg"] < 3.0, acc  # same bounds as the photo path at this size
    assert acc["max_centre_error_fraction"] < 0.08, acc


class _FakeModel:
    """Just what run_mapping reads of a pycolmap reconstruction."""

    def __init__(self, names):
        self._names = list(names)

    def num_reg_images(self):
        return len(self._names)

    def num_points3D(self):
        return 10 * len(self._names)

    def compute_mean_reprojection_error(self):
        return 0.5

    def reg_image_ids(self):
        return range(len(self._names))

    def image(self, i):
        return type("Image", (), {"name": self._names[i]})()


@pytest.mark.parametrize("sizes, runs, registered", [
    ([3, 2, 3, 2, 24, 5], 5, 24),      # stranded: more seeds until a model holds half the images
    ([3, 2, 3, 2, 3, 2, 3, 2, 3], 9, 3),  # never better: stops at three times the attempts
    ([20, 3, 3], 3, 20),               # half or more after the asked attempts: no more runs
    ([29], 1, 29),                     # everything registered: done
])
def test_mapping_retries_while_most_images_are_stranded(monkeypatch, tmp_path, sizes, runs, registered):
    import mclnf_city.capture.sfm as process_module

    names = [f"{i:02d}.jpg" for i in range(29)]
    calls = []

    def map_once(database, image_dir, work_dir, num_images, threads, seed, fix_intrinsics, reporter):
        calls.append(seed)
        return {0: _FakeModel(names[: sizes[len(calls) - 1]])}

    monkeypatch.setattr(process_module, "map_once", map_once)
    monkeypatch.setattr(process_module, "cameras_have_focal_prior", lambda database: False)
    lines = []
    reporter = type("Reporter", (), {"line": lambda self, text: lines.append(text)})()
    rec, dropped, _, record = process_module.run_mapping(tmp_path / "db", tmp_path, tmp_path, names, 1, 0, 3, 5, reporter)
    assert calls == list(range(runs)) and rec.num_reg_images() == registered and len(dropped) == 29 - registered
    assert len(record["attempts"]) == runs
    assert any("trying more seeds" in line for line in lines) == (runs > 3)

"""Tests for mclnf_city.scenes.zoo (the independent procedural generator and its capture zoo).

Fast (well under a minute): every zoo preset is generated once at 96x72 with 32 frames. The
geometry checks use transforms.json alone (nerfstudio/OpenGL pinhole, pixel centres at +0.5)
to project gt/visible_points back into their frames, so a convention slip in the generator
(camera axes, global transform, pixel offset) shows up as points off-image or behind the camera.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mclnf_city.scenes.zoo import FLIGHTS, LAYOUTS, ZOO, build_capture, generate_scene, resolve_options

SMALL = dict(width=96, height=72, frames=32)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {name: generate_scene(root / name, name, **SMALL) for name in ZOO}


def _meta(capture: Path):
    tf = json.loads((capture / "transforms.json").read_text())
    c2w = np.array([f["transform_matrix"] for f in tf["frames"]], dtype=np.float64)
    return tf, c2w


def _project(tf, c2w, points):
    """Pixel coordinates (col, row; pixel centres at +0.5) and depth along the viewing axis."""
    cam = np.einsum("nji,nj->ni", c2w[:, :3, :3], points - c2w[:, :3, 3])  # R^T (p - c)
    depth = -cam[:, 2]  # OpenGL: the camera looks along -z
    col = tf["cx"] + tf["fl_x"] * cam[:, 0] / depth
    row = tf["cy"] - tf["fl_y"] * cam[:, 1] / depth
    return col, row, depth


def _rays(tf, c2w, col, row):
    d = np.stack([(col + 0.5 - tf["cx"]) / tf["fl_x"], -(row + 0.5 - tf["cy"]) / tf["fl_y"], -np.ones_like(col, float)], -1)
    d = np.einsum("nij,nj->ni", c2w[:, :3, :3], d)
    return c2w[:, :3, 3], d / np.linalg.norm(d, axis=1, keepdims=True)


def test_zoo_presets():
    assert len(ZOO) >= 8
    for name in ["nadir_grid", "oblique_serpentine", "orbit_tower", "street_walk", "mixed_drone_street",
                 "tiny_scale_rotated", "huge_scale_zdown", "village_points_rotated"]:
        assert name in ZOO
    for name, opts in ZOO.items():
        assert opts.name == name and opts.description
        resolve_options(name)  # every knob valid
    flights = {o.flight for o in ZOO.values()}
    layouts = {o.layout for o in ZOO.values()}
    assert flights == set(FLIGHTS) and layouts == set(LAYOUTS)
    assert len({o.sky for o in ZOO.values()}) >= 4  # lighting varies across the zoo


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_capture_loads_in_nerfstudio(zoo, name):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    capture, opts = zoo[name], ZOO[name]
    tf, c2w = _meta(capture)
    assert tf["camera_model"] == "OPENCV" and (tf["w"], tf["h"]) == (96, 72)
    assert all(tf[k] == 0.0 for k in ("k1", "k2", "p1", "p2"))
    assert len(tf["frames"]) == 32 == len(list((capture / "images").glob("frame_*.png")))
    assert [f["file_path"] for f in tf["frames"]] == [f"images/frame_{i:05d}.png" for i in range(32)]
    assert ("ply_file_path" in tf) == opts.points == (capture / "sparse_pc.ply").exists()
    np.testing.assert_allclose(np.einsum("nji,njk->nik", c2w[:, :3, :3], c2w[:, :3, :3]), np.broadcast_to(np.eye(3), (32, 3, 3)), atol=1e-9)
    assert np.allclose(np.linalg.det(c2w[:, :3, :3]), 1.0)

    out = NerfstudioDataParserConfig(data=capture, eval_mode="interval", eval_interval=8, load_3D_points=True).setup().get_dataparser_outputs("train")
    assert len(out.image_filenames) == 28
    assert ("points3D_xyz" in out.metadata) == opts.points
    if opts.points:
        assert 1500 <= len(out.metadata["points3D_xyz"]) <= 2000
        assert out.metadata["points3D_rgb"].shape == out.metadata["points3D_xyz"].shape

    gt = np.load(capture / "gt" / "visible_points.npz")
    assert gt["points"].dtype == np.float32 and gt["frame"].dtype == np.int32 and gt["points"].shape[1] == 3
    assert set(np.unique(gt["frame"])) <= set(range(32)) and len(gt["points"]) > 32 * 500
    scene = json.loads((capture / "gt" / "scene.json").read_text())
    assert scene["preset"] == name and scene["seed"] == 0 and len(scene["camera_kinds"]) == 32
    assert scene["scale"] == opts.scale and np.allclose(scene["translation"], opts.translation)
    lo, hi = np.array(scene["bbox"]["min"]), np.array(scene["bbox"]["max"])
    assert np.all(hi > lo)
    assert f"--preset {name}" in (capture / "README.md").read_text()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_scene(tmp_path / "a", "village_points_rotated", seed=5, width=48, height=36, frames=6)
    b = generate_scene(tmp_path / "b", "village_points_rotated", seed=5, width=48, height=36, frames=6)
    c = generate_scene(tmp_path / "c", "village_points_rotated", seed=6, width=48, height=36, frames=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) == 6 + 5  # images, transforms, ply, README, two gt files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.parts[0] == "images")


@pytest.mark.parametrize("name", ["oblique_serpentine", "tiny_scale_rotated", "huge_scale_zdown", "orbit_yup_points", "street_walk"])
def test_visible_points_project_into_their_frames(zoo, name):
    capture = zoo[name]
    tf, c2w = _meta(capture)
    gt = np.load(capture / "gt" / "visible_points.npz")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(gt["points"]), 2000, replace=False)
    pts, frame = gt["points"][pick].astype(np.float64), gt["frame"][pick]
    col, row, depth = _project(tf, c2w[frame], pts)
    assert np.all(depth > 0), "points behind their camera"
    assert np.all((col > -1e-3) & (col < tf["w"] + 1e-3) & (row > -1e-3) & (row < tf["h"] + 1e-3)), "points off their image"
    # every visible point is the hit of a pixel centre: its projection lands on one
    assert np.abs(col - 0.5 - np.round(col - 0.5)).max() < 2e-2 and np.abs(row - 0.5 - np.round(row - 0.5)).max() < 2e-2

    # re-cast the pixel rays (built from transforms.json alone) through the generator's scene
    cap = build_capture(name, 0, **SMALL)
    sub = slice(0, 200)
    o, d = _rays(tf, c2w[frame[sub]], np.round(col[sub] - 0.5), np.round(row[sub] - 0.5))
    hits = cap.cast_world(o, d)
    err = np.linalg.norm(hits - pts[sub], axis=1) / depth[sub]
    assert np.mean(err < 1e-3) >= 0.97, np.sort(err)[-10:]


def test_global_transform(zoo):
    _, c2w = _meta(zoo["huge_scale_zdown"])  # oblique, up is -z: camera up vectors point along -z
    assert np.all(c2w[:, 2, 1] < -0.5)
    _, c2w = _meta(zoo["nadir_village_zdown"])  # nadir in a z-down world: looking along +z
    assert np.allclose(-c2w[:, :3, 2], [0, 0, 1], atol=1e-9)
    _, c2w = _meta(zoo["orbit_yup_points"])
    assert np.all(c2w[:, 1, 1] > 0.5)
    _, c2w = _meta(zoo["oblique_serpentine"])
    assert np.all(c2w[:, 2, 1] > 0.5)

    # scale 0.01 makes the same scene 100x smaller (same seed, same random rotation, no translation)
    opts = replace(ZOO["tiny_scale_rotated"], translation=(0.0, 0.0, 0.0))
    small = build_capture(opts, 3).bbox_world()
    big = build_capture(replace(opts, scale=1.0), 3).bbox_world()
    np.testing.assert_allclose(big, 100 * small, rtol=1e-9, atol=1e-9)
    assert 50 < (big[1] - big[0]).max() < 500
    # scene.json's bbox is the transformed geometry bbox, and the visible points are near it
    scene = json.loads((zoo["huge_scale_zdown"] / "gt" / "scene.json").read_text())
    bbox = build_capture("huge_scale_zdown", 0, **SMALL).bbox_world()
    np.testing.assert_allclose([scene["bbox"]["min"], scene["bbox"]["max"]], bbox)
    pts = np.load(zoo["huge_scale_zdown"] / "gt" / "visible_points.npz")["points"]
    assert pts[:, 2].max() <= bbox[1, 2] + 1 and pts[:, 2].min() >= bbox[0, 2] - 1  # z-down: geometry below the ground plane z=5e3


def test_flight_patterns(zoo):
    _, c2w = _meta(zoo["nadir_grid"])  # straight down, fixed heading: one right vector, no rotation between lines
    assert np.allclose(c2w[:, :3, 2], [0, 0, 1], atol=1e-9)
    assert np.allclose(np.abs(c2w[:, :3, 0] @ c2w[0, :3, 0]), 1.0)
    assert len(np.unique(np.round(c2w[:, 1, 3], 6))) >= 2  # several lines
    _, c2w = _meta(zoo["oblique_serpentine"])  # one altitude, both ways, nearly parallel principal rays
    assert np.ptp(c2w[:, 2, 3]) < 1e-6
    fwd = -c2w[:, :3, 2]
    pitch = np.degrees(np.arcsin(fwd[:, 2]))
    assert np.all((pitch > -50) & (pitch < -35))
    assert np.allclose(np.abs(fwd[:, :2] @ fwd[0, :2]), np.linalg.norm(fwd[0, :2]) ** 2) and (fwd[:, 0] < 0).any() and (fwd[:, 0] > 0).any()
    cap = build_capture("orbit_tower", 0, **SMALL)  # every principal ray passes through the focus
    focus = np.array(cap.site.focus)
    for M, _ in cap.cams:
        v = focus - M[:3, 3]
        assert np.linalg.norm(np.cross(v, -M[:3, 2])) < 1e-6 * np.linalg.norm(v)
    _, c2w = _meta(zoo["street_walk"])  # eye height, small pitch
    assert np.all(np.abs(c2w[:, 2, 3] - 1.7) < 0.1)
    pitch = np.degrees(np.arcsin(-c2w[:, 2, 2]))
    assert np.all((pitch >= -5.01) & (pitch <= 15.01))
    kinds = json.loads((zoo["mixed_drone_street"] / "gt" / "scene.json").read_text())["camera_kinds"]
    assert set(kinds) == {"oblique", "street"}


def test_images_are_textured(tmp_path):
    import cv2

    sift = cv2.SIFT_create()
    for name in ("street_walk", "orbit_tower", "oblique_serpentine"):
        out = generate_scene(tmp_path / name, name, frames=8)  # the default 160x120
        counts = [len(sift.detect(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))) for p in sorted((out / "images").glob("*.png"))]
        assert np.median(counts) >= 50, (name, counts)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'.*nadir_grid"):
        generate_scene(tmp_path / "x", "nope")
    with pytest.raises(ValueError, match="layout 'moon'"):
        generate_scene(tmp_path / "x", replace(ZOO["nadir_grid"], layout="moon"))
    assert not (tmp_path / "x").exists()
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_scene(out, "nadir_grid", width=16, height=12, frames=2)
    generate_scene(out, "nadir_grid", width=16, height=12, frames=2, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine" and len(list((out / "images").iterdir())) == 2


def test_cli(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mclnf_city.scenes.zoo", *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    p = run("--list")
    assert p.returncode == 0 and all(name in p.stdout for name in ZOO)
    assert run("--help").returncode == 0
    p = run("--preset", "nope", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "unknown preset 'nope'" in p.stderr
    p = run("--preset", "orbit_tower", "--out", str(tmp_path / "o"), "--width", "24", "--height", "18", "--frames", "3")
    assert p.returncode == 0, p.stderr
    assert len(json.loads((tmp_path / "o" / "transforms.json").read_text())["frames"]) == 3
    p = run("--preset", "orbit_tower", "--out", str(tmp_path / "o"), "--frames", "3")
    assert p.returncode == 2 and "--overwrite" in p.stderr

"""The city box holds what the cameras see, on captures of every kind (the zoo), at any scale
and orientation, and says so in words when its estimate is weak."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mclnf_city.bounds import BoundsError, estimate_bounds, estimate_up
from mclnf_city.partition import partition_from_bounds
from mclnf_city.scenes.check_bounds import bounds_figures, parse, visible_points
from mclnf_city.scenes.make_city import generate_city
from mclnf_city.scenes.zoo import ZOO, generate_scene

ZOO_SIZE = dict(width=96, height=72, frames=32)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every capture of the zoo (mclnf_city.scenes.zoo), small."""
    root = tmp_path_factory.mktemp("zoo")
    return {name: generate_scene(root / name, name, **ZOO_SIZE) for name in ZOO}


def test_zoo_has_every_kind_of_capture(zoo):
    kinds = {json.loads((c / "gt" / "scene.json").read_text())["options"]["flight"] for c in zoo.values()}
    assert {"nadir", "oblique", "orbit", "street", "mixed"} <= kinds
    with_points = [n for n, c in zoo.items() if (c / "sparse_pc.ply").exists()]
    assert 0 < len(with_points) < len(zoo)


def test_city_box_holds_the_visible_geometry_of_every_zoo_capture(zoo):
    rows = [bounds_figures(c) for c in zoo.values()]
    table = "\n".join(f"{r['capture']}: {r['source']}, inside {100 * r['inside']:.2f} %, volume {r['volume_ratio']:.2f}x" for r in rows)
    for r in rows:
        assert r["inside"] >= 0.99, table
        assert r["volume_ratio"] <= 4.0, table


def test_city_box_of_a_make_city_capture_with_and_without_its_points(tiny_capture, tmp_path):
    """The project's own generator: sparse points, then the same capture without them (depth probe)."""
    capture = generate_city(tmp_path / "city", seed=5, image_width=96, image_height=72, write_depth=True,
                                      progress=False, verbose=False)
    with_points = bounds_figures(capture)
    meta = json.loads((capture / "transforms.json").read_text())
    meta.pop("ply_file_path")
    (capture / "transforms.json").write_text(json.dumps(meta))
    without = bounds_figures(capture)
    assert with_points["source"] == "sparse points" and without["source"] == "depth probe"
    for r in (with_points, without):
        assert r["inside"] >= 0.99 and r["volume_ratio"] <= 4.0, r


def _similarity(seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.det(q))
    return q, scale, torch.randn(3, generator=g, dtype=torch.float64) * 10 * scale


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_city_box_moves_with_the_capture(zoo, scale):
    """Scale, rotate and shift a capture (cameras, points, geometry) without nerfstudio's
    normalisation: the box must still hold the visible geometry."""
    from mclnf_city.depth_probe import triangulate_capture

    capture = zoo["oblique_serpentine"]
    outputs = parse(capture)
    cams = outputs.cameras
    intrinsics = torch.cat([cams.fx, cams.fy, cams.cx, cams.cy], -1)
    sizes = torch.cat([cams.width, cams.height], -1)
    probe = triangulate_capture(cams.camera_to_worlds, intrinsics, sizes, outputs.image_filenames)
    frames = len(json.loads((capture / "transforms.json").read_text())["frames"])
    gt = torch.from_numpy(visible_points(capture, [i for i in range(frames) if i % 8]))
    T = outputs.dataparser_transform.double()
    gt = outputs.dataparser_scale * (gt @ T[:3, :3].T + T[:3, 3])
    R, s, t = _similarity(int(scale * 100), scale)
    c2w = cams.camera_to_worlds.double().clone()
    c2w[:, :3, :3] = R @ c2w[:, :3, :3]
    c2w[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    move = lambda p: s * p.double() @ R.T + t  # noqa: E731
    bounds = estimate_bounds(c2w, move(probe.points), intrinsics, sizes, "depth probe", s * probe.view_depths)
    part = partition_from_bounds(bounds, c2w)
    local, box = part.to_city(move(gt)), part.city_box()
    inside = ((local >= box[0]) & (local <= box[1])).all(-1).double().mean().item()
    assert inside >= 0.99
    up0, _ = estimate_up(cams.camera_to_worlds)
    assert torch.allclose(torch.tensor(bounds.report.up, dtype=torch.float64), R @ up0, atol=1e-6)


def _survey(headings=(0.0,), pitch_deg=-90.0, rows=4, cols=5):
    """Cameras of a lawnmower flight at one altitude: [N, 3, 4], world up +z."""
    c2w = []
    p = math.radians(pitch_deg)
    for r in range(rows):
        for c in range(cols):
            yaw = math.radians(headings[(r + c) % len(headings)])
            fwd = torch.tensor([math.cos(p) * math.cos(yaw), math.cos(p) * math.sin(yaw), math.sin(p)], dtype=torch.float64)
            right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0], dtype=torch.float64)
            up = torch.linalg.cross(right, fwd)
            c2w.append(torch.stack([right, up, -fwd, torch.tensor([c * 1.0, r * 1.0, 5.0], dtype=torch.float64)], 1))
    return torch.stack(c2w)


@pytest.mark.parametrize("headings,pitch", [((0.0,), -90.0), ((0.0, 180.0), -90.0), ((0.0, 180.0), -45.0), ((0.0, 90.0), -30.0)])
def test_up_axis_of_surveys(headings, pitch):
    """Nadir flights that never turn have parallel right vectors: up comes from the plane of the
    camera centres. Any world orientation: rotate the whole flight."""
    R, _, _ = _similarity(3, 1.0)
    c2w = _survey(headings, pitch)
    c2w = torch.cat([R @ c2w[:, :, :3], (R @ c2w[:, :, 3:])], dim=2)
    up, how = estimate_up(c2w)
    assert torch.allclose(up, R[:, 2], atol=1e-6), how


def test_cameras_alone_give_a_warning_and_a_generous_box():
    c2w = _survey((0.0,), -85.0)
    bounds = estimate_bounds(c2w, None)
    assert bounds.report.source == "cameras only"
    text = " ".join(bounds.report.warnings)
    assert "--pipeline.height-range" in text and "near parallel" in text
    # Generous: the ground lies well below the cameras (at 5 units) and the cameras are inside.
    assert bounds.z_range[0] < 0.0 and bounds.report.cameras_inside == len(c2w)


def test_bounds_set_by_hand_win_and_bad_ones_are_refused():
    c2w = _survey((0.0, 90.0), -45.0)
    bounds = estimate_bounds(c2w, None, up=(0.0, 0.0, 2.0), height_range=(-1.0, 3.0), ground_extent=(-2.0, 6.0, -1.0, 5.0))
    assert bounds.z_range == (-1.0, 3.0)
    assert bounds.lo.tolist() == [-2.0, -1.0] and bounds.hi.tolist() == [6.0, 5.0]
    assert bounds.report.up == [0.0, 0.0, 1.0] and "set by hand" in bounds.report.source
    with pytest.raises(BoundsError, match="height-range"):
        estimate_bounds(c2w, None, height_range=(2.0, 1.0))
    with pytest.raises(BoundsError, match="ground-extent"):
        estimate_bounds(c2w, None, ground_extent=(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(BoundsError, match="up"):
        estimate_bounds(c2w, None, up=(0.0, 0.0, 0.0))


def test_upside_down_up_is_named():
    """A wrong up given by hand puts the cameras below the ground: the report says so."""
    c2w = _survey((0.0, 90.0), -45.0)
    pts = torch.cat([torch.rand(200, 2, dtype=torch.float64) * 4, torch.rand(200, 1, dtype=torch.float64) * 0.5], 1)
    bounds = estimate_bounds(c2w, pts, up=(0.0, 0.0, -1.0))
    assert any("upside down" in w for w in bounds.report.warnings)



def test_points_seen_only_from_afar_do_not_stretch_the_ground_extent():
    """A few points far from every camera (distant scenery, bad triangulations) are left to the
    far field, and the report counts them; the ground the cameras fly over stays inside."""
    c2w = _survey((0.0, 90.0), -45.0)  # cameras over x 0..4, y 0..3 at height 5
    g = torch.Generator().manual_seed(0)
    ground = torch.cat([torch.rand(400, 2, generator=g, dtype=torch.float64) * 4, torch.zeros(400, 1, dtype=torch.float64)], 1)
    far = torch.tensor([[60.0, 40.0, 0.0], [-50.0, 45.0, 1.0], [55.0, -48.0, 0.5]], dtype=torch.float64)
    bounds = estimate_bounds(c2w, torch.cat([ground, far]))
    assert bounds.report.far_points == 3
    assert (bounds.hi - bounds.lo).max() < 8.0  # not stretched towards the far points (~100 wide)
    box = bounds.box()
    assert ((ground >= box[0]) & (ground <= box[1])).all(-1).float().mean() == 1.0
    assert any("far field" in line for line in bounds.report.lines(box))
    # Without the far points, the same box: nothing else moved.
    near_only = estimate_bounds(c2w, ground)
    assert near_only.report.far_points == 0 and torch.allclose(near_only.box(), box)

def test_a_capture_without_ground_truth_is_refused_by_name(tiny_capture, tmp_path, capsys):
    """A real capture (no gt/) gets a message naming it and what is missing, not a traceback."""
    from mclnf_city.scenes.check_bounds import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_capture)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tiny_capture) in err and "no ground-truth geometry" in err and "city_bounds.png" in err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing_here")])
    assert "no transforms.json" in capsys.readouterr().err

"""Tests for mclnf_city.scenes' city generator (synthetic city captures).

Fast (a few seconds): tiny cities, small images.  The depth check uses an
independent reference: rays are rebuilt from transforms.json alone and
intersected brute force (Moller-Trumbore) with the triangles of gt/mesh.ply.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mclnf_city.scenes.flight import camera_rays, make_cameras
from mclnf_city.scenes.layout import build_city
from mclnf_city.scenes.make_city import generate_city, main
from mclnf_city.scenes.options import STYLES, CityOptions
from mclnf_city.scenes.raycast import in_shadow, intersect

ROOT = Path(__file__).resolve().parents[1]

SMALL = dict(blocks_x=2, blocks_y=1, image_width=48, image_height=36, drone_line_spacing=30.0,
             drone_step=16.0, street_step=40.0, num_points=600)


def _gen(out: Path, seed: int = 3, **kw) -> Path:
    opts = dict(SMALL)
    opts.update(kw)
    return generate_city(out, seed=seed, progress=False, verbose=False, **opts)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return _gen(tmp_path_factory.mktemp("city") / "cap", write_depth=True)


def _load(capture: Path):
    tf = json.loads((capture / "transforms.json").read_text())
    gt = json.loads((capture / "gt" / "city.json").read_text())
    return tf, gt


def _rays(tf: dict, c2w: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Unit world directions for pixel indices, nerfstudio/OpenGL convention."""
    x = (px + 0.5 - tf["cx"]) / tf["fl_x"]
    y = -(py + 0.5 - tf["cy"]) / tf["fl_y"]
    d = np.stack([x, y, -np.ones_like(x)], -1) @ c2w[:3, :3].T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def test_capture_layout(capture):
    from PIL import Image

    tf, gt = _load(capture)
    n = len(tf["frames"])
    assert n == len(gt["frames"]) == len(list((capture / "images").glob("*.png")))
    assert tf["camera_model"] == "OPENCV" and tf["ply_file_path"] == "sparse_pc.ply"
    assert all(tf[k] == 0.0 for k in ("k1", "k2", "p1", "p2"))
    assert (tf["w"], tf["h"]) == (48, 36)
    for i, fr in enumerate(tf["frames"]):
        assert fr["file_path"] == f"images/frame_{i:05d}.png" == gt["frames"][i]["file_path"]
    im = Image.open(capture / tf["frames"][0]["file_path"])
    assert im.mode == "RGB" and im.size == (48, 36)
    kinds = [f["kind"] for f in gt["frames"]]
    assert kinds == sorted(kinds)  # capture order: all drone frames, then street
    assert "drone" in kinds and "street" in kinds
    assert gt["depth"]["kind"] == "z_depth"
    dep = np.load(capture / "gt" / "depth" / "frame_00000.npy")
    assert dep.dtype == np.float32 and dep.shape == (36, 48)
    assert len(gt["buildings"]) >= 2
    assert not any(p.name.startswith(".") for p in capture.parent.iterdir())  # no temp dirs left


def test_sparse_points(capture):
    from plyfile import PlyData

    v = PlyData.read(str(capture / "sparse_pc.ply"))["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert len(v) == 600
    _, gt = _load(capture)
    (x0, y0, _), (x1, y1, z1) = gt["bounds"]["ground"][0], gt["bounds"]["city"][1]
    gx1, gy1 = gt["bounds"]["ground"][1][:2]
    assert np.all(v["z"] >= -1e-3) and np.all(v["z"] <= z1 + 1e-3)
    assert np.all((v["x"] >= x0 - 1e-3) & (v["x"] <= gx1 + 1e-3) & (v["y"] >= y0 - 1e-3) & (v["y"] <= gy1 + 1e-3))


def test_determinism(capture, tmp_path):
    again = _gen(tmp_path / "again", write_depth=True)
    names = ["transforms.json", "sparse_pc.ply", "gt/mesh.ply", "gt/city.json",
             "images/frame_00000.png", "images/frame_00007.png", "gt/depth/frame_00003.npy"]
    n = len(list((capture / "images").glob("*.png")))
    names.append(f"images/frame_{n - 1:05d}.png")
    for name in names:
        assert (capture / name).read_bytes() == (again / name).read_bytes(), name
    other = _gen(tmp_path / "other", seed=4)
    assert (capture / "transforms.json").read_bytes() != (other / "transforms.json").read_bytes()
    assert (capture / "images/frame_00000.png").read_bytes() != (other / "images/frame_00000.png").read_bytes()


def _mesh_triangles(path: Path) -> np.ndarray:
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = ply["vertex"]
    V = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float64)
    F = np.stack(ply["face"]["vertex_indices"]).astype(np.int64)
    return V[F]  # (F, 3, 3)


def _moller_trumbore(o: np.ndarray, d: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Nearest hit distance of rays (o: (3,), d: (N, 3)) with triangles (F, 3, 3); inf = miss."""
    v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(d[:, None, :], e2[None])
    det = np.einsum("nfk,fk->nf", p, e1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - v0
    u = np.einsum("fk,nfk->nf", s, p) * inv
    q = np.cross(s, e1)
    v = np.einsum("nk,fk->nf", d, q) * inv
    t = np.einsum("fk,fk->f", e2, q)[None] * inv
    hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 1e-6)
    return np.where(hit, t, np.inf).min(1)


def test_depth_matches_mesh(capture):
    tf, gt = _load(capture)
    tris = _mesh_triangles(capture / "gt" / "mesh.ply")
    rng = np.random.default_rng(0)
    n = len(tf["frames"])
    street = [f["index"] for f in gt["frames"] if f["kind"] == "street"]
    frames = sorted(set([0, n // 4, n // 2, street[0], street[len(street) // 2], n - 1]))
    n_sky = n_building = 0
    for i in frames:
        c2w = np.array(tf["frames"][i]["transform_matrix"])
        depth = np.load(capture / "gt" / "depth" / f"frame_{i:05d}.npy")
        px, py = rng.integers(0, tf["w"], 40), rng.integers(0, tf["h"], 40)
        d = _rays(tf, c2w, px.astype(float), py.astype(float))
        t = _moller_trumbore(c2w[:3, 3], d, tris)
        z_ref = t * (d @ -c2w[:3, 2])  # ray distance -> z-depth
        z = depth[py, px].astype(np.float64)
        sky = ~np.isfinite(z_ref)
        assert np.all(z[sky] == 0.0), f"frame {i}: depth where the mesh has no hit"
        np.testing.assert_allclose(z[~sky], z_ref[~sky], rtol=1e-5, atol=1e-4, err_msg=f"frame {i}")
        n_sky += int(sky.sum())
        n_building += int(((c2w[2, 3] + t * d[:, 2])[~sky] > 0.05).sum())
    assert n_building > 10  # the check exercised building faces, not just the ground


def test_intersection_and_shadows_match_bruteforce():
    city = build_city(7, CityOptions(blocks_x=2, blocks_y=2, style="oldtown", image_width=40, image_height=30))
    frames = make_cameras(city)

    def brute(orig, d):
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (city.bmin[None] - orig[:, None]) / d[:, None]
        t2 = (city.bmax[None] - orig[:, None]) / d[:, None]
        tn, tf = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
        return np.where((tn <= tf) & (tn > 1e-6), tn, np.inf).min(1)

    for f in frames[::9]:
        d = camera_rays(f.c2w, city.options, 1).reshape(-1, 3)
        o = f.c2w[:3, 3]
        hit = intersect(city, o, d.reshape(30, 40, 3))
        t = hit["t"].reshape(-1)
        tb = brute(np.broadcast_to(o, d.shape), d)
        box = hit["kind"].reshape(-1) == 2
        # Box choice runs in float32; distances are recomputed in float64.
        np.testing.assert_allclose(t[box], tb[box], rtol=1e-6)
        assert np.all(tb[~box] >= t[~box] * (1 - 1e-6))  # nothing nearer was missed
        p = (o + np.where(np.isfinite(t), t, 0)[:, None] * d)[hit["kind"].reshape(-1) == 1] + [0, 0, 1e-4]
        ref = np.isfinite(brute(p, np.broadcast_to(city.sun, p.shape)))
        assert np.array_equal(in_shadow(city, p), ref)


def test_styles_and_height_overrides():
    styles = {build_city(seed, CityOptions(blocks_x=1, blocks_y=1, style="random")).style_name
              for seed in range(12)}
    assert len(styles) >= 2 and styles <= set(STYLES)
    city = build_city(0, CityOptions(blocks_x=2, blocks_y=2, style="suburb", min_height=5, max_height=6))
    assert np.all(city.bmax[:, 2] >= 5 - 1e-9) and np.all(city.bmax[:, 2] <= 6 + 1e-9)
    a = build_city(1, CityOptions(style="downtown"))
    b = build_city(1, CityOptions(style="downtown", street_step=7.0, drone_step=3.0))
    np.testing.assert_array_equal(a.bmin, b.bmin)  # camera options never change the layout


def test_camera_poses(capture):
    tf, gt = _load(capture)
    (gx0, gy0, _), (gx1, gy1, _) = gt["bounds"]["ground"]
    hmax = gt["bounds"]["city"][1][2]
    fracs = []
    for fr, meta in zip(tf["frames"], gt["frames"]):
        c2w = np.array(fr["transform_matrix"])
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
        assert abs(np.linalg.det(R) - 1.0) < 1e-6
        np.testing.assert_array_equal(c2w[3], [0, 0, 0, 1])
        assert abs(R[2, 0]) < 1e-6  # no roll: camera x axis stays horizontal
        fwd = -R[:, 2]
        if meta["kind"] == "drone":
            assert c2w[2, 3] > hmax and fwd[2] < -0.4
            yy, xx = np.mgrid[0 : tf["h"] : 4, 0 : tf["w"] : 4]
            d = _rays(tf, c2w, xx.ravel().astype(float), yy.ravel().astype(float))
            t = -c2w[2, 3] / np.minimum(d[:, 2], -1e-12)
            gx, gy = c2w[0, 3] + t * d[:, 0], c2w[1, 3] + t * d[:, 1]
            fracs.append(np.mean((d[:, 2] < 0) & (gx >= gx0) & (gx <= gx1) & (gy >= gy0) & (gy <= gy1)))
        else:
            assert 1.5 < c2w[2, 3] < 2.1 and abs(fwd[2]) < 0.5
            inside = [np.all(c2w[:2, 3] > b["min"][:2]) and np.all(c2w[:2, 3] < b["max"][:2])
                      for b in gt["buildings"]]
            assert not any(inside)
    assert min(fracs) > 0.6 and np.mean(fracs) > 0.9  # drone rays hit the ground within bounds


def test_loads_with_nerfstudio_dataparser(capture):
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=capture).setup()
    train = parser.get_dataparser_outputs("train")
    val = parser.get_dataparser_outputs("val")
    n = len(list((capture / "images").glob("*.png")))
    assert len(train.image_filenames) + len(val.image_filenames) == n
    assert train.cameras.camera_to_worlds.shape == (len(train.image_filenames), 3, 4)
    assert int(train.cameras.width[0]) == 48 and int(train.cameras.height[0]) == 36


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="blocks_x must be an integer >= 1"):
        generate_city(tmp_path / "x", blocks_x=0, progress=False, verbose=False)
    with pytest.raises(ValueError, match="blocks_y"):
        CityOptions(blocks_y=-2).validate()
    with pytest.raises(ValueError, match="style"):
        CityOptions(style="nope").validate()
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "y"), "--blocks-x", "0"])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cap"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    tiny = dict(blocks_x=1, blocks_y=1, image_width=16, image_height=12, drone_line_spacing=60.0,
                drone_step=60.0, street_paths="none", num_points=10)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _gen(out, **tiny)
    assert (out / "keep.txt").read_text() == "precious"
    _gen(out, overwrite=True, **tiny)
    assert not (out / "keep.txt").exists() and (out / "transforms.json").exists()


DEMO = ROOT / "assets" / "demo_city"


@pytest.mark.skipif(not (DEMO / "transforms.json").exists(), reason="demo capture not generated")
def test_bundled_demo_capture():
    tf = json.loads((DEMO / "transforms.json").read_text())
    gt = json.loads((DEMO / "gt" / "city.json").read_text())
    n = len(tf["frames"])
    assert 100 <= n <= 140 and len(list((DEMO / "images").glob("*.png"))) == n
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 2.5e6
    assert gt["options"]["blocks_x"] == gt["options"]["blocks_y"] == 2
    # Every block is seen repeatedly and from several directions.
    for b in gt["coverage"]["blocks"]:
        assert b["min_views"] >= 3 and b["median_directions"] >= 3, b

"""mclnf-export: stitched mesh (no cracks, accuracy against ground truth), point cloud, map,
thumbnails, bad input. One tiny city trained in-process (about a minute on one core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, tiny_trainer_config
from mclnf_city.mesh_accuracy import compare_meshes, ground_plane, random_mesh, read_mesh, shifted
from mclnf_city.trainer import setup_trainer


@pytest.fixture(scope="module")
def trained_config(tiny_capture, tmp_path_factory) -> Path:
    config = tiny_trainer_config(tiny_capture, tmp_path_factory.mktemp("export_runs"), steps_per_block=100)
    config.pipeline.datamanager.train_num_rays_per_batch = 512
    trainer = setup_trainer(config)
    trainer.train()
    return config.get_base_dir() / "config.yml"


@pytest.fixture(scope="module")
def city(trained_config):
    from mclnf_city.export import load_city

    return load_city(trained_config)


def export(argv) -> int:
    from mclnf_city.export import main

    return main([*argv, "--quiet"])


# ------------------------------------------------------------------------------ stitching
def face_set(part):
    """Faces as sorted triples of weld keys: identity independent of vertex numbering."""
    return set(map(tuple, np.sort(part.keys[part.faces], axis=1)))


def boundary_edges(part):
    edges = np.sort(np.concatenate([part.faces[:, [0, 1]], part.faces[:, [1, 2]], part.faces[:, [2, 0]]]), axis=1)
    unique, count = np.unique(part.keys[edges], axis=0, return_counts=True)
    return set(map(tuple, unique[count == 1]))


def test_stitched_mesh_equals_one_marching_cubes_over_the_whole_lattice(city):
    """Block by block and welded = marching cubes on the whole lattice at once: the same faces
    (so no crack and no duplicate along block borders), the same boundary edges, the same vertices.

    (Open edges exist in both: at the city box's sides, and a few where snapping a vertex onto a
    lattice point made a sliver triangle degenerate; the same ones whichever way the lattice is split.)"""
    from mclnf_city import export as ex

    lattice = ex.CityLattice.over_city(city.partition, ex.lattice_spacing(city, 1.0))
    density = ex.LatticeDensity(city.model, city.partition, lattice)
    blocks = sorted(city.store.done_blocks())
    ranges = lattice.cell_owner_ranges(city.partition, blocks)
    assert len(ranges) == 4
    stitched = ex.weld(ex.block_meshes(density, ranges, 10.0))
    whole = ex.weld([ex.march_volume(density.block(0, lattice.shape[0], 0, lattice.shape[1]), (0, 0, 0), lattice.shape, 10.0)])
    assert len(stitched.faces) > 10_000
    stitched_faces = face_set(stitched)
    assert len(stitched_faces) == len(stitched.faces), "duplicated faces"
    assert stitched_faces == face_set(whole)
    assert boundary_edges(stitched) == boundary_edges(whole)
    assert np.array_equal(stitched.keys, whole.keys) and np.array_equal(stitched.positions, whole.positions)


def test_a_subset_of_blocks_is_the_matching_part_of_the_city(city):
    from mclnf_city import export as ex

    lattice = ex.CityLattice.over_city(city.partition, ex.lattice_spacing(city, 0.5))
    density = ex.LatticeDensity(city.model, city.partition, lattice)
    ranges = lattice.cell_owner_ranges(city.partition, range(4))
    parts = dict(zip(ranges, ex.block_meshes(density, ranges, 10.0)))
    all_faces = face_set(ex.weld(list(parts.values())))
    some = face_set(ex.weld([parts[0], parts[3]]))
    rest = face_set(ex.weld([parts[1], parts[2]]))
    assert some and rest and not (some & rest) and some | rest == all_faces


# ------------------------------------------------------------------------------ accuracy
def test_mesh_matches_ground_truth_and_broken_meshes_do_not(trained_config, tiny_capture, tmp_path, city):
    """Chamfer distance and F-score against make_city's gt/mesh.ply, both cut to the city box.

    Thresholds, measured on this tiny run (1 cell/m, density 10, tau 2 m; 100 steps per block
    of 40x30 images, so the geometry is coarse): whole box Chamfer 1.55 m, above-ground F 0.55.
    A mesh shifted by one block width: Chamfer 13.5 m, above-ground F 0.003. Random triangles:
    6.1 m, 0.10. The flat ground alone: 1.7 m (the ground fills most of the box), F 0.
    The test asks Chamfer < 3 m AND above-ground F@2 m > 0.35: every control fails one of them.
    """
    from mclnf_city import export as ex

    out = tmp_path / "city.ply"
    assert export(["mesh", "--load-config", str(trained_config), "--output", str(out), "--resolution", "1"]) == 0
    vertices, faces = read_mesh(out)
    gt_v, gt_f = read_mesh(tiny_capture / "gt" / "mesh.ply")
    box = city.frame.to_output(ex.city_to_world(city.partition, city.partition.city_box().numpy()))
    lo, hi = box.min(0), box.max(0)
    ground = float(gt_v[:, 2].min())
    block_width = float(city.partition.x_edges[1] - city.partition.x_edges[0]) / city.frame.scale

    def passes(v, f):
        m = compare_meshes(v, f, gt_v, gt_f, lo, hi, tau=2.0, n=50_000, above=ground + 1.0)
        return m["chamfer"] < 3.0 and m["above_ground"]["fscore"] > 0.35, m

    ok, metrics = passes(vertices, faces)
    assert ok, metrics
    for name, (v, f) in {
        "shifted by one block": (shifted(vertices, block_width), faces),
        "random triangles": random_mesh(lo, hi, len(faces), 1.0),
        "ground plane only": ground_plane(lo, hi, ground),
    }.items():
        broken_ok, m = passes(v, f)
        assert not broken_ok, (name, m)

    from plyfile import PlyData

    ply = PlyData.read(str(out))
    colors = np.stack([ply["vertex"][c] for c in ("red", "green", "blue")], axis=1)
    assert colors.std(axis=0).max() > 5  # coloured by the field, not one flat colour


# ------------------------------------------------------------------------------ other exports
def test_pointcloud(trained_config, tmp_path):
    from plyfile import PlyData

    out = tmp_path / "points.ply"
    assert export(["pointcloud", "--load-config", str(trained_config), "--output", str(out),
                   "--num-points", "3000", "--max-cameras", "8", "--cameras", "test"]) == 0
    v = PlyData.read(str(out))["vertex"]
    assert v.count == 3000
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    assert np.all(np.isfinite(xyz)) and np.ptp(xyz[:, 0]) > 10  # metres, spread over the city
    assert np.stack([v["red"], v["green"], v["blue"]], axis=1).std(axis=0).max() > 5


def test_map(trained_config, city, tmp_path):
    from PIL import Image

    out = tmp_path / "map"
    assert export(["map", "--load-config", str(trained_config), "--output-dir", str(out), "--resolution", "2"]) == 0
    meta = json.loads((out / "map.json").read_text())
    rgb = np.asarray(Image.open(out / "rgb.png"))
    height = np.load(out / "height.npy")
    height16 = np.asarray(Image.open(out / "height.png"))
    assert rgb.shape == (meta["height"], meta["width"], 3) and height.shape == rgb.shape[:2] == height16.shape
    # The city box at 2 m per pixel (the box holds the city and the ground its cameras see).
    box = city.partition.city_box()
    extent_m = float(box[1, 0] - box[0, 0]) / city.frame.scale
    assert abs(meta["width"] - extent_m / 2) <= 2 and meta["units_per_pixel"] == 2
    assert rgb.std() > 3
    finite = np.isfinite(height)
    assert finite.mean() > 0.1 and np.all((height[finite] > -5) & (height[finite] < 40))  # metres, ground at 0
    scale = meta["height_png"]
    back = scale["z_min"] + (height16.astype(float) - 1) * scale["z_step"]
    assert np.allclose(back[finite], height[finite], atol=2 * scale["z_step"]) and np.all(height16[~finite] == 0)


def test_thumbnails(trained_config, tmp_path):
    from PIL import Image

    out = tmp_path / "blocks.png"
    assert export(["thumbnails", "--load-config", str(trained_config), "--output", str(out), "--tile-size", "64", "48"]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * 48, 2 * 64, 3)
    for tile in (sheet[:48, :64], sheet[:48, 64:], sheet[48:, :64], sheet[48:, 64:]):
        assert tile[16:].std() > 3  # rendered, not blank (below the label)


# ------------------------------------------------------------------------------ bad input
def test_missing_config_exits_nonzero_naming_the_file(tmp_path):
    missing = tmp_path / "nope" / "config.yml"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "mclnf_city.export", "mesh", "--load-config", str(missing),
                           "--output", str(tmp_path / "m.ply")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and str(missing) in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "m.ply").exists()


def test_run_without_a_city(trained_config, tmp_path, capsys):
    config = yaml.load(trained_config.read_text(), Loader=yaml.Loader)
    config.pipeline.store_dir = tmp_path / "empty_city"
    moved = tmp_path / "config.yml"
    moved.write_text(yaml.dump(config))
    assert export(["mesh", "--load-config", str(moved), "--output", str(tmp_path / "m.ply")]) == 1
    err = capsys.readouterr().err
    assert "manifest.json" in err and "no trained city" in err
    assert not (tmp_path / "m.ply").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--blocks"], "empty list"),
        (["--blocks", "7"], "block 7 does not exist"),
        (["--bbox", "500", "500", "0", "600", "600", "10"], "outside the city"),
        (["--bbox", "10", "0", "0", "0", "10", "10"], "max must exceed min"),
        (["--density-threshold", "1e9"], "no surface"),
    ],
)
def test_bad_mesh_options(trained_config, tmp_path, capsys, extra, message):
    out = tmp_path / "m.ply"
    assert export(["mesh", "--load-config", str(trained_config), "--output", str(out), "--resolution", "0.25", *extra]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_help_documents_every_option(capsys):
    from mclnf_city.export import build_parser

    parser = build_parser()
    for command, options in {
        "mesh": ["--resolution", "--density-threshold", "--blocks", "--bbox", "--output", "--frame"],
        "pointcloud": ["--num-points", "--cameras", "--max-cameras", "--bbox", "--downscale", "--min-opacity"],
        "map": ["--resolution", "--output-dir", "--bbox", "--min-opacity"],
        "thumbnails": ["--tile-size", "--output"],
    }.items():
        with pytest.raises(SystemExit) as e:
            parser.parse_args([command, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for option in options:
            assert option in text, (command, option)

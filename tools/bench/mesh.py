"""Geometry accuracy of `mclnf-export mesh` against a generated city's ground-truth mesh.

Trains the tiny preset on a `mclnf_city.scenes.make_city` capture (or takes a trained run with
--load-config), exports the stitched mesh at a given resolution, and measures against
`<capture>/gt/mesh.ply`, both cropped to the city box (the region the model reconstructs;
`mclnf_city.mesh_accuracy`):

- Chamfer distance: mean of the two mean nearest-neighbour distances (metres), between
  points sampled uniformly by area on each surface;
- precision / recall / F-score at a tolerance tau: the fraction of exported-surface points
  within tau of the ground truth, of ground-truth points within tau of the export, and their
  harmonic mean.

Writes a JSON of the numbers and a PNG of the mesh (matplotlib, software rendering).

    python tools/bench/mesh.py --resolution 2 --steps-per-block 400   # writes tools/bench/results/mesh/mesh.json
    python tools/bench/mesh.py --smoke --work-dir /tmp/w --out /tmp/bench_mesh.json   # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from mclnf_city import export as ex
from mclnf_city.files import write_ply
from mclnf_city.mesh_accuracy import compare_meshes, crop_faces, ground_plane, random_mesh, read_mesh, shifted
from mclnf_city.scenes.make_city import generate_city
from mclnf_city.trainer import preset_config, setup_trainer

from common import RESULTS, parse_args

# --smoke: a sparse flight (21 images instead of 114), so the per-block evaluations and the city
# report render few test views.
SPARSE_FLIGHT = dict(drone_line_spacing=60.0, drone_step=40.0, street_step=80.0)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray], path: Path,
                size: Tuple[int, int] = (960, 720), elevation: float = 50.0, azimuth: float = -60.0,
                samples: int = 3_000_000) -> None:
    """Software render (numpy, no GPU): dense area-weighted surface samples, Lambert-shaded,
    projected orthographically and z-buffered (nearest sample per pixel wins)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    normal = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(normal, axis=1)
    keep = area > 0
    faces, a, b, c, normal, area = faces[keep], a[keep], b[keep], c[keep], normal[keep], area[keep]
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    tri = rng.choice(len(faces), size=samples, p=area / area.sum())
    u, v = rng.random(samples), rng.random(samples)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    points = a[tri] + u[:, None] * (b[tri] - a[tri]) + v[:, None] * (c[tri] - a[tri])
    if colors is None:
        albedo = np.full((samples, 3), 0.8)
    else:
        col = colors.astype(np.float64) / 255.0
        f = faces[tri]
        albedo = (1 - u - v)[:, None] * col[f[:, 0]] + u[:, None] * col[f[:, 1]] + v[:, None] * col[f[:, 2]]
    el, az = np.radians(elevation), np.radians(azimuth)
    to_viewer = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    right = np.cross([0.0, 0.0, 1.0], to_viewer)
    right /= np.linalg.norm(right)
    up = np.cross(to_viewer, right)
    light = to_viewer + np.array([0.3, 0.2, 0.6])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.abs(normal[tri] @ light)  # two-sided: marching-cubes sheets have two faces
    rgb = np.clip(albedo * shade[:, None], 0, 1)
    sx, sy, depth = points @ right, points @ up, points @ to_viewer
    w, h = size
    scale = 0.95 * min(w / (np.ptp(sx) + 1e-9), h / (np.ptp(sy) + 1e-9))
    px = ((sx - (sx.min() + sx.max()) / 2) * scale + w / 2).astype(int).clip(0, w - 1)
    py = (h / 2 - (sy - (sy.min() + sy.max()) / 2) * scale).astype(int).clip(0, h - 1)
    order = np.argsort(-depth)  # nearest to the viewer first
    pixel = py[order] * w + px[order]
    _, first = np.unique(pixel, return_index=True)
    image = np.full((h * w, 3), 255, np.uint8)
    image[pixel[first]] = (rgb[order][first] * 255).astype(np.uint8)
    Image.fromarray(image.reshape(h, w, 3)).save(path)


def train_city(capture: Path, out: Path, steps_per_block: int, rays: int, ray_samples: Optional[Tuple[int, int]] = None) -> Path:
    """Train the tiny preset on a capture in-process; returns the run's config.yml."""
    config = preset_config("mclnf-city-tiny", capture, out, steps_per_block, rays=rays)
    if ray_samples:
        config.pipeline.model.num_coarse_samples, config.pipeline.model.num_fine_samples = ray_samples
    config.steps_per_save = 10_000
    trainer = setup_trainer(config)
    trainer.train()
    return config.get_base_dir() / "config.yml"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-config", type=Path, default=None, help="a trained run of a make_city capture (default: train one)")
    parser.add_argument("--capture", type=Path, default=None, help="the capture (default: the run's data, or a new one)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_mesh"), help="where captures, runs and meshes go")
    parser.add_argument("--seed", type=int, default=3, help="city seed when generating (default 3, the test city)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[96, 72], help="generated image width height")
    parser.add_argument("--steps-per-block", type=int, default=400)
    parser.add_argument("--rays", type=int, default=1024, help="rays per training step")
    parser.add_argument("--resolution", type=float, default=2.0, help="lattice cells per metre")
    parser.add_argument("--density-threshold", type=float, nargs="+", default=[10.0], help="iso-levels to measure")
    parser.add_argument("--tau", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="F-score tolerances in metres")
    parser.add_argument("--samples", type=int, default=200_000, help="surface samples per mesh for the metrics")
    parser.add_argument("--out", type=Path, default=RESULTS / "mesh" / "mesh.json")
    parser.add_argument("--png", type=Path, default=None, help="mesh picture (default: beside --out)")
    parser.add_argument("--png-size", type=int, nargs=2, default=[960, 720], help="mesh picture width height")
    parser.add_argument("--png-samples", type=int, default=3_000_000, help="surface samples drawn in the mesh picture")
    parser.add_argument("--ray-samples", type=int, nargs=2, default=None, metavar=("COARSE", "FINE"),
                        help="samples per ray when training (default: the preset's)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a sparse tiny capture, a few steps per block, a coarse lattice: checks that the "
                             "benchmark runs (other options still override)")
    smoke_dir = Path(tempfile.gettempdir()) / "bench_mesh_smoke"
    args = parse_args(parser, argv, work_dir=smoke_dir, out=smoke_dir / "bench_mesh.json", image_size=[40, 30], steps_per_block=3,
                      rays=64, ray_samples=[8, 8], resolution=0.25, samples=5000, png_size=[240, 180], png_samples=50_000)

    started = time.time()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    result: Dict = {"command": "python tools/bench/mesh.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    capture = args.capture
    if args.load_config is None:
        if capture is None:
            flight, sparse = (SPARSE_FLIGHT, "_sparse") if args.smoke else ({}, "")
            capture = work / f"city_seed{args.seed}_{args.image_size[0]}x{args.image_size[1]}{sparse}"
            if not capture.exists():
                generate_city(capture, seed=args.seed, progress=False, verbose=False, blocks_x=2, blocks_y=2,
                              image_width=args.image_size[0], image_height=args.image_size[1], **flight)
        t = time.time()
        config_path = train_city(capture, work / "runs", args.steps_per_block, args.rays, args.ray_samples)
        result["train"] = {"seconds": round(time.time() - t, 1), "steps_per_block": args.steps_per_block, "rays": args.rays,
                           "ray_samples": args.ray_samples, "capture": str(capture), "preset": "mclnf-city-tiny"}
    else:
        config_path = args.load_config
    city = ex.load_city(config_path)
    if capture is None:
        capture = Path(city.config.pipeline.datamanager.data)
    gt_v, gt_f = read_mesh(capture / "gt" / "mesh.ply")
    box = city.frame.to_output(ex.city_to_world(city.partition, city.partition.city_box().numpy()))
    lo, hi = box.min(0), box.max(0)
    block_width = float(city.partition.x_edges[1] - city.partition.x_edges[0]) / city.frame.scale
    result.update(config=str(config_path), capture=str(capture), resolution_cells_per_metre=args.resolution,
                  city_box_metres=[lo.tolist(), hi.tolist()], block_width_metres=block_width, runs=[])
    spacing = ex.lattice_spacing(city, args.resolution)
    ground = float(gt_v[:, 2].min())  # make_city: the ground quad is the lowest surface
    for level in args.density_threshold:
        mesh, summary = ex.export_mesh(city, spacing, level, sorted(city.store.done_blocks()), progress=False)
        entry = {"density_threshold": level, "export": summary, "metrics": {}, "controls": {}}
        broken = {
            "shifted_by_one_block": (shifted(mesh.vertices, block_width), mesh.faces),
            "random_triangles": random_mesh(lo, hi, max(len(mesh.faces), 1000), 1.0 / args.resolution),
            # not broken, but a floor to beat: the flat ground alone, no building at all
            "ground_plane_only": ground_plane(lo, hi, ground),
        }
        for tau in args.tau:
            entry["metrics"][str(tau)] = compare_meshes(mesh.vertices, mesh.faces, gt_v, gt_f, lo, hi, tau, args.samples, above=ground + 1.0)
            for name, (v, f) in broken.items():
                entry["controls"].setdefault(name, {})[str(tau)] = compare_meshes(v, f, gt_v, gt_f, lo, hi, tau, args.samples, above=ground + 1.0)
        ply = work / f"mesh_level{level:g}.ply"
        write_ply(ply, mesh.vertices, mesh.colors, mesh.faces)
        entry["ply"] = str(ply)
        result["runs"].append(entry)
        m = entry["metrics"][str(args.tau[len(args.tau) // 2])]
        up = m["above_ground"]
        print(f"level {level:g}: {summary['faces']:,} faces in {summary['seconds']} s; chamfer {m['chamfer']:.3f} m, "
              f"F@{m['tau']:g} m {m['fscore']:.3f} (precision {m['precision']:.3f}, recall {m['recall']:.3f}); "
              f"above ground: chamfer {up['chamfer']:.3f} m, F {up['fscore']:.3f}")
    best = min(result["runs"], key=lambda e: e["metrics"][str(args.tau[len(args.tau) // 2])]["chamfer"])
    png = args.png or args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    vertices, faces, colors = read_colored_mesh(Path(best["ply"]))
    render_mesh(vertices, faces, colors, png, size=tuple(args.png_size), samples=args.png_samples)
    gv, gf = crop_faces(gt_v, gt_f, lo, hi)
    render_mesh(gv, gf, None, png.with_name(png.stem + "_gt.png"), size=tuple(args.png_size), samples=args.png_samples)
    result["png"] = [str(png), str(png.with_name(png.stem + "_gt.png"))]
    result["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} and {png}")
    return 0


def read_colored_mesh(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    from plyfile import PlyData

    vertices, faces = read_mesh(path)
    v = PlyData.read(str(path))["vertex"]
    return vertices, faces, np.stack([v["red"], v["green"], v["blue"]], axis=1)


if __name__ == "__main__":
    sys.exit(main())

"""Procedural synthetic city generator -> nerfstudio capture directory.

Builds a deterministic (seeded) city of axis-aligned box buildings on a grid of
city blocks separated by streets, renders it with a vectorised numpy ray caster
from a drone lawnmower flight plus street-level walks, and writes a capture that
nerfstudio 1.1.5's ``nerfstudio-data`` dataparser loads as is, together with
ground truth (triangle mesh, layout, optional depth maps).

World frame
    z up, metres, ground plane at z = 0, origin at the centre of the city.
    The city occupies ``[-W/2, W/2] x [-D/2, D/2]`` with
    ``W = blocks_x * (block_size + street_width) + street_width`` (a street runs
    around the perimeter and between all blocks; D likewise with blocks_y).

Cameras (``transforms.json``)
    Pinhole ``OPENCV`` model, no distortion, shared intrinsics; ``fov_deg`` is the
    horizontal field of view.  ``transform_matrix`` is camera-to-world in the
    nerfstudio / OpenGL convention: columns are camera +x (right), +y (up),
    +z (backwards; the camera looks along -z) and the centre, in world metres.
    Pixel (col, row) has its centre at (col + 0.5, row + 0.5), the same as
    nerfstudio's ray generation.  Frames are numbered in capture order: drone
    flight lines first (boustrophedon), then street paths; nerfstudio sorts by
    file name, so its order equals the capture order.

Output layout (``--out DIR``)::

    images/frame_00000.png ...   8-bit RGB
    transforms.json              nerfstudio capture (ply_file_path: sparse_pc.ply)
    sparse_pc.ply                points on visible surfaces with colours
    gt/mesh.ply                  ground quad + building boxes (triangles)
    gt/city.json                 seed, style, bounds, buildings, streets, per-frame kind
    gt/depth/frame_00000.npy     float32 z-depth in metres, 0 = sky (--write-depth)
    README.md                    what this is and the command that made it

Example (``mclnf-make-city`` is the same command once the package is installed)::

    python -m mclnf_city.scenes.make_city --seed 3 --blocks-x 3 --blocks-y 2 --out /tmp/city

Python API: ``generate_city(Path("/tmp/city"), seed=3, blocks_x=3)`` or with a
``CityOptions`` instance.  Importing this module has no side effects.  This module
writes the capture; the city itself comes from the other modules of the package
(options, layout, flight, raycast, textures, render, coverage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from mclnf_city.files import write_ply
from mclnf_city.scenes.coverage import coverage
from mclnf_city.scenes.flight import Frame, drone_altitude, intrinsics, make_cameras
from mclnf_city.scenes.layout import City, build_city, city_mesh
from mclnf_city.scenes.options import STYLES, YARD_TYPES, CityOptions
from mclnf_city.scenes.render import render_frame


def _equivalent_command(out: Path, seed: int, opts: CityOptions) -> str:
    """CLI command reproducing ``opts`` (only non-default flags)."""
    args = ["python", "-m", "mclnf_city.scenes.make_city", "--seed", str(seed)]
    default = CityOptions()
    for f in dataclasses.fields(CityOptions):
        v, dv = getattr(opts, f.name), getattr(default, f.name)
        if v == dv:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif f.name == "street_headings":
            args += [flag, ",".join(f"{h:g}" for h in v)]
        else:
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    args += ["--out", str(out)]
    return shlex.join(args)


def _readme(city: City, frames: List[Frame], command: str, cov: Optional[Dict[str, Any]]) -> str:
    o = city.options
    n_d = sum(f.kind == "drone" for f in frames)
    cov_line = ""
    if cov is not None:
        cov_line = (f"- coverage: every sample point (block sidewalks, roofs) is seen unoccluded in >= "
                    f"{cov['min_views']} frames;\n  per block the median point is seen from >= "
                    f"{cov['min_median_directions']:g} of 4 azimuth sectors\n")
    depth_line = ("- `gt/depth/frame_XXXXX.npy`: float32 z-depth (metres along the optical axis) at pixel centres, "
                  "0 = sky\n" if o.write_depth else "- no depth maps (regenerate with `--write-depth` for them)\n")
    return f"""# Synthetic city capture (seed {city.seed}, style `{city.style_name}`)

A procedurally generated city rendered by `mclnf_city.scenes.make_city` (numpy ray caster).
Textures, sun shading and shadows depend on the surface point only (nothing is
view-dependent except the sky), so all views are consistent. Made with:

```
{command}
```

Re-running the command reproduces the files byte for byte (same numpy/Pillow/zlib).

## Scene
- {o.blocks_x} x {o.blocks_y} city blocks of {o.block_size:g} m, streets {o.street_width:g} m wide (also around the
  perimeter), {len(city.bmin)} box buildings {city.bmax[:, 2].min():.1f}-{city.max_height:.1f} m tall, countryside
  ground {o.ground_margin:g} m beyond the city, sky/haze beyond that
- world frame: z up, metres, ground z = 0, origin at the city centre; city bounds
  x [{city.bounds[0]:g}, {city.bounds[1]:g}], y [{city.bounds[2]:g}, {city.bounds[3]:g}]

## Cameras
- {len(frames)} images {o.image_width}x{o.image_height}, pinhole, horizontal fov {o.fov_deg:g} deg
- frames 0-{n_d - 1}: drone, boustrophedon flight at ~{drone_altitude(city):.1f} m, oblique
  ({o.drone_pitch_min:g}-{o.drone_pitch_max:g} deg down); headings along the line, every other shot turned
  90 deg, and turned towards the city near the edges of the flight
- frames {n_d}-{len(frames) - 1}: street level (~{o.street_height:g} m), walking every street, views along the
  street and sideways at the facades
- frame numbers follow the capture order (nerfstudio sorts by file name, so its order is the same)
{cov_line}
## Files
- `transforms.json`: nerfstudio format, `OPENCV` model with zero distortion, shared intrinsics;
  `transform_matrix` = camera-to-world, OpenGL convention (x right, y up, camera looks along -z),
  in world metres (nerfstudio re-centres/scales on load); pixel centres at (col+0.5, row+0.5)
- `sparse_pc.ply`: {o.num_points} points sampled on visible surfaces, with their rendered colours
- `gt/mesh.ply`: ground quad + building boxes (triangles); `gt/city.json`: options, bounds,
  buildings (min/max corners), street layout, per-frame kind (drone/street), pose angles, coverage
{depth_line}
Train: `ns-train nerfacto --data <this dir>` (dataparser `nerfstudio-data`).
"""


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")


_JOB: Dict[str, Any] = {}
"""What the frame renderer needs; set before the worker processes fork, so they inherit it."""


def _render_and_save(idx: int) -> Tuple[str, Dict[str, Any]]:
    """Render frame idx and write its image (and depth map); returns its file name and its points."""
    job = _JOB
    opts = job["opts"]
    # One worker draws the points from one stream in frame order; several draw per frame.
    rng = job["rng"] if job["workers"] == 1 else np.random.default_rng(np.random.SeedSequence([job["seed"], 4, idx]))
    r = render_frame(job["city"], job["frames"][idx], want_depth=opts.write_depth, n_points=job["per_frame"], rng=rng)
    name = f"frame_{idx:05d}"
    if opts.image_format == "jpg":
        Image.fromarray(r["rgb"]).save(job["tmp"] / "images" / f"{name}.jpg", quality=95)
    else:
        Image.fromarray(r["rgb"]).save(job["tmp"] / "images" / f"{name}.png", compress_level=9)
    if opts.write_depth:
        np.save(job["tmp"] / "gt" / "depth" / f"{name}.npy", r["depth"])
    return f"{name}.{opts.image_format}", {k: r[k] for k in ("points", "colors") if k in r}


def generate_city(out: Path, seed: int = 0, *, options: Optional[CityOptions] = None, overwrite: bool = False,
                  progress: bool = True, verbose: bool = True, command: Optional[str] = None, workers: int = 1,
                  **overrides: Any) -> Path:
    """Generate a capture into ``out`` and return it.

    ``options`` (or defaults) are updated with ``overrides`` (field names of
    ``CityOptions``).  Output is written to a sibling temp dir and renamed into
    place at the end, so ``out`` is either absent/old or complete. ``workers`` > 1 renders
    frames in that many processes; the sparse points are then drawn per frame, so they
    differ from a one-worker run of the same seed (the images do not).
    """
    opts = dataclasses.replace(options or CityOptions(), **overrides)
    if isinstance(opts.street_headings, (int, float)):
        opts.street_headings = (float(opts.street_headings),)
    opts.street_headings = tuple(float(h) for h in opts.street_headings)
    opts.validate()
    out = Path(out)
    _prepare_out(out, overwrite)
    t_start = time.perf_counter()

    city = build_city(seed, opts)
    frames = make_cameras(city)
    if not frames:
        raise ValueError("the camera options produced no frames")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "gt").mkdir()
        if opts.write_depth:
            (tmp / "gt" / "depth").mkdir()
        rng_pts = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(4)[3])
        per_frame = -(-opts.num_points // len(frames)) if opts.num_points else 0
        pts, cols = [], []
        fx, fy, cx, cy = intrinsics(opts)
        tf_frames, gt_frames = [], []
        _JOB.update(city=city, frames=frames, tmp=tmp, opts=opts, per_frame=per_frame, rng=rng_pts, seed=int(seed), workers=workers)
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                rendered = list(tqdm(pool.imap(_render_and_save, range(len(frames)), chunksize=4), total=len(frames),
                                     desc="rendering", unit="img", disable=not progress))
        else:
            rendered = [_render_and_save(i) for i in tqdm(range(len(frames)), desc="rendering", unit="img", disable=not progress)]
        _JOB.clear()
        for idx, (fr, (name, r)) in enumerate(zip(frames, rendered)):
            if "points" in r:
                pts.append(r["points"])
                cols.append(r["colors"])
            tf_frames.append(dict(file_path=f"images/{name}",
                                  transform_matrix=[[float(v) for v in row] for row in fr.c2w]))
            gt_frames.append(dict(index=idx, file_path=f"images/{name}", kind=fr.kind, path_id=fr.path_id,
                                  position=[round(float(v), 6) for v in fr.position],
                                  yaw_deg=round(fr.yaw_deg, 4), pitch_deg=round(fr.pitch_deg, 4)))

        P = np.concatenate(pts)[: opts.num_points] if pts else np.zeros((0, 3))
        C = np.concatenate(cols)[: opts.num_points] if cols else np.zeros((0, 3), np.uint8)
        write_ply(tmp / "sparse_pc.ply", P, C)
        transforms = dict(camera_model="OPENCV", fl_x=fx, fl_y=fy, cx=cx, cy=cy,
                          w=opts.image_width, h=opts.image_height, k1=0.0, k2=0.0, p1=0.0, p2=0.0,
                          frames=tf_frames, ply_file_path="sparse_pc.ply")
        (tmp / "transforms.json").write_text(json.dumps(transforms, indent=2) + "\n")
        vertices, faces, colors = city_mesh(city)
        write_ply(tmp / "gt" / "mesh.ply", vertices, colors, faces)

        # Coverage costs points x frames x boxes ray tests; skip for huge cities.
        n_cov = (8 + len(city.bmin) / (opts.blocks_x * opts.blocks_y)) * opts.blocks_x * opts.blocks_y
        cov = coverage(city, frames) if n_cov * len(frames) * len(city.bmin) <= 2e8 else None
        xmin, xmax, ymin, ymax = city.bounds
        gt = dict(
            generator="mclnf_city.scenes.make_city", seed=int(seed), style=city.style_name, options=opts.to_json(),
            world_frame="z up, metres, ground z=0, origin at city centre",
            camera_convention="transform_matrix is camera-to-world, OpenGL (x right, y up, camera looks along -z); "
                              "pixel centres at (col+0.5, row+0.5); fov_deg is horizontal",
            bounds=dict(city=[[xmin, ymin, 0.0], [xmax, ymax, city.max_height]],
                        ground=[[city.ground_bounds[0], city.ground_bounds[2], 0.0],
                                [city.ground_bounds[1], city.ground_bounds[3], 0.0]]),
            streets=dict(blocks_x=opts.blocks_x, blocks_y=opts.blocks_y, block_size=opts.block_size,
                         street_width=opts.street_width, sidewalk_width=opts.sidewalk_width, pitch=city.pitch,
                         x_street_centres=[xmin + opts.street_width / 2 + i * city.pitch for i in range(opts.blocks_x + 1)],
                         y_street_centres=[ymin + opts.street_width / 2 + j * city.pitch for j in range(opts.blocks_y + 1)],
                         block_min_corners=[[[xmin + opts.street_width + i * city.pitch,
                                              ymin + opts.street_width + j * city.pitch]
                                             for j in range(opts.blocks_y)] for i in range(opts.blocks_x)],
                         yards=[[YARD_TYPES[int(city.yard[i, j])] for j in range(opts.blocks_y)]
                                for i in range(opts.blocks_x)]),
            sun_direction=[float(v) for v in city.sun],
            drone_altitude=drone_altitude(city) if opts.drone else None,
            buildings=[dict(id=m, block=[int(v) for v in city.block_of[m]],
                            min=[float(v) for v in city.bmin[m]], max=[float(v) for v in city.bmax[m]],
                            wall_rgb=[round(float(v), 4) for v in city.wall[m]])
                       for m in range(len(city.bmin))],
            depth=(dict(kind="z_depth", units="metres", description="distance along the camera optical axis "
                        "(-z of the camera) at pixel centres; 0 where the ray hits the sky", dtype="float32",
                        path="gt/depth/frame_XXXXX.npy") if opts.write_depth else None),
            coverage=cov,
            frames=gt_frames,
        )
        (tmp / "gt" / "city.json").write_text(json.dumps(gt, indent=1) + "\n")
        cmd = command or _equivalent_command(out, seed, opts)
        (tmp / "README.md").write_text(_readme(city, frames, cmd, cov))

        # Atomic-ish swap: the old capture (if --overwrite) is moved aside first.
        _prepare_out(out, overwrite)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    if verbose:
        n_d = sum(f.kind == "drone" for f in frames)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        xmin, xmax, ymin, ymax = city.bounds
        print(f"[make_city] {out}: {len(frames)} images ({n_d} drone, {len(frames) - n_d} street) "
              f"{opts.image_width}x{opts.image_height}, {len(city.bmin)} buildings, style {city.style_name}, "
              f"city bounds x[{xmin:.1f},{xmax:.1f}] y[{ymin:.1f},{ymax:.1f}] z[0,{city.max_height:.1f}] m, "
              f"{len(P)} points, {size / 1e6:.2f} MB, {time.perf_counter() - t_start:.1f} s")
        if cov is not None:
            print(f"[make_city] coverage: every sample point seen in >= {cov['min_views']} frames; per block the "
                  f"median point is seen from >= {cov['min_median_directions']:g} of 4 azimuth sectors")
    return out


def _headings(s: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated degrees, got {s!r}") from e


def build_parser() -> argparse.ArgumentParser:
    d = CityOptions()
    p = argparse.ArgumentParser(
        prog="mclnf-make-city",
        description="Generate a deterministic synthetic city capture (nerfstudio format + ground truth).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output capture directory")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g = p.add_argument_group("layout")
    g.add_argument("--blocks-x", type=int, default=d.blocks_x, help="number of city blocks along x")
    g.add_argument("--blocks-y", type=int, default=d.blocks_y, help="number of city blocks along y")
    g.add_argument("--block-size", type=float, default=d.block_size, help="city block side (m)")
    g.add_argument("--street-width", type=float, default=d.street_width, help="street width, kerb to kerb (m)")
    g.add_argument("--sidewalk-width", type=float, default=d.sidewalk_width, help="sidewalk width inside each block (m)")
    g.add_argument("--style", default=d.style, choices=sorted(STYLES) + ["random"],
                   help="palette/height preset; 'random' picks one from the seed")
    g.add_argument("--min-height", type=float, default=None, help="override the style's minimum building height (m)")
    g.add_argument("--max-height", type=float, default=None, help="override the style's maximum building height (m)")
    g.add_argument("--ground-margin", type=float, default=d.ground_margin,
                   help="countryside ground around the city (m); beyond it rays see the sky/haze")
    g = p.add_argument_group("rendering")
    g.add_argument("--image-width", type=int, default=d.image_width, help="image width (px)")
    g.add_argument("--image-height", type=int, default=d.image_height, help="image height (px)")
    g.add_argument("--fov-deg", type=float, default=d.fov_deg, help="horizontal field of view (deg)")
    g.add_argument("--supersample", type=int, default=d.supersample, help="SxS rays per pixel (anti-aliasing)")
    g.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=d.shadows, help="cast sun shadows")
    g = p.add_argument_group("drone (lawnmower flight)")
    g.add_argument("--drone", action=argparse.BooleanOptionalAction, default=d.drone, help="render drone views")
    g.add_argument("--drone-altitude", type=float, default=None,
                   help="flight altitude (m); default drone_altitude_factor x tallest building (>= 20 m)")
    g.add_argument("--drone-altitude-factor", type=float, default=d.drone_altitude_factor,
                   help="altitude as a multiple of the tallest building")
    g.add_argument("--drone-line-spacing", type=float, default=None,
                   help="distance between flight lines (m); default 0.6 x altitude")
    g.add_argument("--drone-step", type=float, default=None,
                   help="distance between shots along a line (m); default 0.25 x altitude")
    g.add_argument("--drone-margin", type=float, default=None,
                   help="fly this far beyond the city edge (m); default 0.3 x altitude")
    g.add_argument("--drone-pitch-min", type=float, default=d.drone_pitch_min, help="min pitch below horizon (deg)")
    g.add_argument("--drone-pitch-max", type=float, default=d.drone_pitch_max, help="max pitch below horizon (deg)")
    g.add_argument("--drone-rotate", action=argparse.BooleanOptionalAction, default=d.drone_rotate,
                   help="turn every other shot 90 deg left/right of the flight line")
    g = p.add_argument_group("street level")
    g.add_argument("--street-paths", default=d.street_paths, choices=["all", "interior", "none"],
                   help="which streets to walk (interior = not the perimeter ring)")
    g.add_argument("--street-step", type=float, default=d.street_step, help="distance between stops along a street (m)")
    g.add_argument("--street-headings", type=_headings, default=d.street_headings,
                   help="comma-separated view headings per stop, deg relative to travel (0 fwd, 90 left, -90 right)")
    g.add_argument("--street-height", type=float, default=d.street_height, help="camera height (m)")
    g.add_argument("--street-pitch-forward", type=float, default=d.street_pitch_forward,
                   help="pitch above horizon of forward views (deg)")
    g.add_argument("--street-pitch-side", type=float, default=d.street_pitch_side,
                   help="pitch above horizon of sideways (facade) views (deg)")
    g = p.add_argument_group("outputs")
    g.add_argument("--num-points", type=int, default=d.num_points, help="points in sparse_pc.ply")
    g.add_argument("--write-depth", action="store_true", help="write gt/depth/*.npy z-depth maps")
    g.add_argument("--image-format", default=d.image_format, choices=["png", "jpg"], help="image files: png (lossless) or jpg (quality 95, small)")
    g.add_argument("--workers", type=int, default=1,
                   help="render frames in this many processes (sparse points then drawn per frame: they differ from one worker's)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(CityOptions)}
    opts = CityOptions(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        opts.validate()
    except ValueError as e:
        parser.error(str(e))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "mclnf_city.scenes.make_city", *argv_list])
    try:
        generate_city(args.out, args.seed, options=opts, overwrite=args.overwrite, progress=not args.quiet,
                      verbose=not args.quiet, command=command, workers=args.workers)
    except FileExistsError as e:
        print(f"mclnf-make-city: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

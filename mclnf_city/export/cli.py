"""`mclnf-export`: what users take away from a trained city (mesh, point cloud, map, thumbnails).

    mclnf-export mesh        --load-config <run>/config.yml --output city.ply
    mclnf-export pointcloud  --load-config <run>/config.yml --output points.ply
    mclnf-export map         --load-config <run>/config.yml --output-dir map/
    mclnf-export thumbnails  --load-config <run>/config.yml --output blocks.png

Every subcommand loads the run with nerfstudio's `eval_setup` (finished blocks come from the
city store, `<run>/city`) and renders through the model's own routing and volume rendering.
Frames: outputs are written in the capture's own frame (the one of transforms.json: metres for
GPS or `mclnf-make-city` captures), undoing nerfstudio's dataparser transform, unless
`--frame nerfstudio` is given (the frame ns-export writes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from mclnf_city.export.city import ExportError, city_to_world, finished_blocks, load_city
from mclnf_city.export.mesh import export_mesh, lattice_spacing
from mclnf_city.export.orthomap import export_map, height_to_uint16
from mclnf_city.export.pointcloud import export_pointcloud
from mclnf_city.export.thumbnails import export_thumbnails
from mclnf_city.files import atomic_write, atomic_write_bytes, write_png, write_ply


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mclnf-export",
        description="Export a trained mclnf-city run: mesh, point cloud, bird's-eye map, block thumbnails. "
        "Coordinates are in the capture's frame (transforms.json; metres for GPS or make_city captures) "
        "unless --frame nerfstudio is given.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{mesh,pointcloud,map,thumbnails}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--load-config", type=Path, required=True, help="config.yml of the run (the city store is <run>/city)")
        p.add_argument("--frame", choices=["capture", "nerfstudio"], default="capture",
                       help="output coordinates: the capture's frame (default) or nerfstudio's normalised frame")
        p.add_argument("--bbox", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                       help="only export what lies in this box (output frame); default: the whole city")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("mesh", help="triangle mesh of the density field (marching cubes, block by block, stitched)",
                       description="Marching cubes on the city's density, one block at a time over one global lattice "
                       "(memory bounded by one block), stitched into one mesh without cracks or duplicated faces "
                       "(vertices welded by lattice edge), coloured by the owning block seen head-on. "
                       "Only density makes geometry: the far-field (sky) heads never do.")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PLY file to write (vertex colours, triangles)")
    p.add_argument("--resolution", type=float, default=None,
                   help="lattice cells per unit of the output frame (per metre for a metric capture); "
                   "default: 256 cells along the city's longest side")
    p.add_argument("--density-threshold", type=float, default=10.0,
                   help="iso-level of the density, in nerfstudio units (1 / normalised scene length); 10 measured best of 5, 10, 20 on generated cities (default: 10)")
    p.add_argument("--blocks", type=int, nargs="*", default=None, help="block ids to mesh (default: every finished block)")

    p = sub.add_parser("pointcloud", help="points where camera rays end (rendered depth), with colours")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PLY file to write (points with colours)")
    p.add_argument("--num-points", type=int, default=1_000_000, help="points to keep, a uniform random subset (default: 1000000)")
    p.add_argument("--cameras", choices=["train", "test", "all"], default="train", help="which cameras to render (default: train)")
    p.add_argument("--max-cameras", type=int, default=None, help="render at most this many cameras, evenly spread (default: all)")
    p.add_argument("--downscale", type=int, default=1, help="render cameras at 1/N resolution (default: 1)")
    p.add_argument("--min-opacity", type=float, default=0.5,
                   help="a ray gives a point only if its accumulated opacity is at least this (skips sky) (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset (default: 0)")

    p = sub.add_parser("map", help="bird's-eye orthographic RGB and height map of the city")
    common(p)
    p.add_argument("--output-dir", type=Path, required=True,
                   help="folder for rgb.png, height.npy (float32, NaN = no surface), height.png (16-bit) and map.json")
    p.add_argument("--resolution", type=float, default=None,
                   help="output-frame units per pixel (metres per pixel for a metric capture); default: 512 pixels along the longest side")
    p.add_argument("--min-opacity", type=float, default=0.5, help="pixels below this accumulated opacity have no height (default: 0.5)")

    p = sub.add_parser("thumbnails", help="one rendered tile per block, laid out as the block grid, labelled id and status")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--tile-size", type=int, nargs=2, default=[192, 144], metavar=("W", "H"), help="tile size in pixels (default: 192 144)")
    return parser


@torch.no_grad()  # scoped, not torch.set_grad_enabled(False): main() also runs inside other programs (tests)
def run(args: argparse.Namespace) -> Dict:
    from rich.console import Console

    console = Console(stderr=False)
    city = load_city(args.load_config, args.frame)
    progress = not args.quiet
    if args.command == "mesh":
        blocks = finished_blocks(city, args.blocks)
        spacing = lattice_spacing(city, args.resolution)
        mesh, summary = export_mesh(city, spacing, args.density_threshold, blocks, args.bbox, progress)
        if len(mesh.faces) == 0:
            raise ExportError(f"no surface at density {args.density_threshold} in blocks {blocks}: nothing to write (try a lower --density-threshold)")
        write_ply(args.output, mesh.vertices, mesh.colors, mesh.faces)
        summary["output"] = str(args.output)
        console.print(f"[bold green]mesh[/bold green] {args.output}: {summary['vertices']:,} vertices, {summary['faces']:,} faces, "
                      f"blocks {summary['blocks']}, lattice {summary['lattice_points']}, {summary['seconds']} s")
    elif args.command == "pointcloud":
        xyz, colors, summary = export_pointcloud(city, args.num_points, args.cameras, args.max_cameras, args.downscale,
                                                 args.min_opacity, args.bbox, args.seed, progress)
        write_ply(args.output, xyz, colors)
        summary["output"] = str(args.output)
        console.print(f"[bold green]point cloud[/bold green] {args.output}: {summary['points']:,} points from "
                      f"{summary['cameras']} cameras, {summary['seconds']} s")
    elif args.command == "map":
        if args.resolution is None:
            box = city.frame.to_output(city_to_world(city.partition, city.partition.city_box().numpy()))
            args.resolution = float(np.max(np.abs(box[1, :2] - box[0, :2]))) / 512
        rgb, height, summary = export_map(city, args.resolution, args.min_opacity, args.bbox)
        height16, scale = height_to_uint16(height)
        summary["height_png"] = scale
        summary["height_npy"] = "float32 z of the surface in the output frame, NaN where no surface"
        out = Path(args.output_dir)
        write_png(out / "rgb.png", rgb)
        atomic_write(out / "height.npy", lambda tmp: np.save(open(tmp, "wb"), height))
        write_png(out / "height.png", height16)
        atomic_write_bytes(out / "map.json", json.dumps(summary, indent=1).encode())
        console.print(f"[bold green]map[/bold green] {out}: {summary['width']}x{summary['height']} pixels at "
                      f"{args.resolution:g} units/pixel, {summary['pixels_with_surface']:,} with a surface, {summary['seconds']} s")
    elif args.command == "thumbnails":
        sheet, summary = export_thumbnails(city, args.tile_size[0], args.tile_size[1], progress)
        write_png(args.output, sheet)
        console.print(f"[bold green]thumbnails[/bold green] {args.output}: {sheet.shape[1]}x{sheet.shape[0]} pixels, "
                      f"{len(summary['blocks'])} blocks")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"mclnf-export {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

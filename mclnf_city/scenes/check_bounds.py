"""How well the city box fits the geometry the training cameras see, on generated captures.

For a capture with known geometry (`gt/visible_points.npz` from the zoo, `mclnf_city.scenes.zoo`,
or `gt/depth/*.npy` from `mclnf_city.scenes.make_city --write-depth`), the capture is parsed the way
`ns-train mclnf-city` parses it (nerfstudio-data, every 8th image a test view), the city
box is estimated exactly as the pipeline does (`mclnf_city.bounds.capture_bounds`, with
the block grid laid over it), and the visible surface points of the training cameras are
mapped into the dataparser's frame and tested against the box:

- inside: fraction of those points inside the city box (target >= 0.99);
- volume ratio: the city box's volume over the bounding box (city frame) of those points
  (target <= 4).

    mclnf-check-bounds CAPTURE [CAPTURE ...] [--json out.json]
    mclnf-check-bounds --zoo [--width 96 --height 72 --frames 32]   # every zoo capture, generated in a temp dir

(or `python -m mclnf_city.scenes.check_bounds ...`, the same command from a checkout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from method_configs import mclnf_city_presets
from mclnf_city.bounds import capture_bounds
from mclnf_city.partition import check_camera_spread, partition_from_bounds
from mclnf_city.scenes.zoo import ZOO, generate_scene

TEST_INTERVAL = 8


class NoGroundTruth(ValueError):
    """The capture has no known geometry to measure the city box against."""


def require_ground_truth(capture: Path) -> None:
    """Refuse, naming the capture and what is missing, before anything is parsed."""
    capture = Path(capture)
    if (capture / "gt" / "visible_points.npz").exists():
        return
    frames = json.loads((capture / "transforms.json").read_text())["frames"]
    depth = capture / "gt" / "depth"
    missing = [Path(f["file_path"]).stem + ".npy" for f in frames if not (depth / (Path(f["file_path"]).stem + ".npy")).exists()]
    if missing:
        what = "no gt/ directory" if not (capture / "gt").exists() else f"{len(missing)} of {len(frames)} depth maps missing in {depth} (e.g. {missing[0]})"
        raise NoGroundTruth(
            f"{capture}: no ground-truth geometry to check the city box against ({what}; it needs "
            "gt/visible_points.npz from mclnf-scene-zoo or gt/depth/*.npy from mclnf-make-city --write-depth). "
            "For a real capture, ns-train mclnf-city prints its city box against the sparse points and cameras "
            "at start and draws it in city_bounds.png in the run directory."
        )


def visible_points(capture: Path, train_frames: List[int]) -> np.ndarray:
    """[N, 3] surface points (capture world frame) seen by the given frames (transforms.json order)."""
    capture = Path(capture)
    require_ground_truth(capture)
    npz = capture / "gt" / "visible_points.npz"
    if npz.exists():
        data = np.load(npz)
        keep = np.isin(data["frame"], np.asarray(train_frames))
        return data["points"][keep].astype(np.float64)
    meta = json.loads((capture / "transforms.json").read_text())
    fx, fy, cx, cy = meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]
    out = []
    for i in train_frames:
        frame = meta["frames"][i]
        depth = np.load(capture / "gt" / "depth" / (Path(frame["file_path"]).stem + ".npy"))
        h, w = depth.shape
        v, u = np.mgrid[0:h, 0:w]
        z = depth.reshape(-1)
        ok = z > 0
        x_cam = np.stack([(u.reshape(-1) + 0.5 - cx) / fx * z, -(v.reshape(-1) + 0.5 - cy) / fy * z, -z], -1)[ok]
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        out.append(x_cam @ c2w[:3, :3].T + c2w[:3, 3])
    return np.concatenate(out)


def parse(capture: Path):
    """The training split as ns-train mclnf-city parses it (nerfstudio-data with the preset's split)."""
    parser_config = mclnf_city_presets.mclnf_city.config.pipeline.datamanager.dataparser
    parser_config = type(parser_config)(**{**vars(parser_config), "data": Path(capture)})
    return parser_config.setup().get_dataparser_outputs("train")


def bounds_figures(capture: Path, **bounds_options) -> Dict:
    """Estimate the city box of a capture as the pipeline does and measure it against the visible geometry."""
    require_ground_truth(capture)
    outputs = parse(capture)
    c2w = outputs.cameras.camera_to_worlds
    check_camera_spread(c2w)
    bounds, points = capture_bounds(outputs, **bounds_options)
    partition = partition_from_bounds(bounds, c2w)
    n_frames = len(json.loads((Path(capture) / "transforms.json").read_text())["frames"])
    train = [i for i in range(n_frames) if i % TEST_INTERVAL != 0]
    gt = torch.from_numpy(visible_points(capture, train))
    T = outputs.dataparser_transform.double()
    gt = outputs.dataparser_scale * (gt @ T[:3, :3].T + T[:3, 3])
    local = partition.to_city(gt)
    box = partition.city_box()
    inside = ((local >= box[0]) & (local <= box[1])).all(-1).double().mean().item()
    geo = torch.stack([local.min(0).values, local.max(0).values])
    volume = lambda b: float((b[1] - b[0]).clamp_min(1e-12).prod())  # noqa: E731
    return {
        "capture": Path(capture).name,
        "source": bounds.report.source,
        "points": bounds.report.num_points,
        "inside": inside,
        "volume_ratio": volume(box) / volume(geo),
        "warnings": bounds.report.warnings,
        "box": box.tolist(),
        "geometry_box": geo.tolist(),
    }


def zoo_captures(out: Path, width: int, height: int, frames: int) -> List[Path]:
    """Generate every zoo capture under `out`."""
    return [generate_scene(out / name, name, width=width, height=height, frames=frames) for name in ZOO]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="*", type=Path, help="captures with gt/visible_points.npz or gt/depth")
    p.add_argument("--zoo", action="store_true", help="generate and measure every capture of the zoo")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=72)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--no-probe", action="store_true", help="without sparse points, use the cameras alone")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    captures = list(args.captures)
    with tempfile.TemporaryDirectory() as tmp:
        if args.zoo:
            captures += zoo_captures(Path(tmp), args.width, args.height, args.frames)
        if not captures:
            p.error("give captures or --zoo")
        for capture in captures:
            if not (Path(capture) / "transforms.json").is_file():
                p.error(f"{capture}: no transforms.json (not a nerfstudio capture)")
            try:
                require_ground_truth(capture)
            except NoGroundTruth as e:
                p.error(str(e))
        rows = [bounds_figures(c, depth_probe=not args.no_probe) for c in captures]
    print(f"{'capture':28s} {'source':32s} {'points':>7s} {'inside':>8s} {'volume':>7s}  warnings")
    for r in rows:
        print(f"{r['capture']:28s} {r['source']:32s} {r['points']:7d} {100 * r['inside']:7.2f}% {r['volume_ratio']:6.2f}x  {len(r['warnings'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    ok = all(r["inside"] >= 0.99 and r["volume_ratio"] <= 4.0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

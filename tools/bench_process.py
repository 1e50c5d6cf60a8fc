"""Accuracy and speed of `mclnf-process` on real photos.

lund_door has a ground-truth COLMAP model: our poses (read back from transforms.json,
so the OpenGL conversion and the city-frame alignment are checked too) are aligned to
it by a similarity on the camera centres (Umeyama), then per registered image:
- rotation error: angle of R_gt^T @ (R_align @ R_ours), camera-to-world, in degrees;
- centre error: distance after alignment / scene extent, where the extent is the
  largest distance between two ground-truth camera centres.
Target: <= 2 deg and <= 5 % for every registered image.

lund_street has no poses: registered images, reprojection error and time are recorded.

    python tools/bench_process.py --data /work/shared/data --max-size 800 --out docs/bench_process.json
    python tools/bench_process.py --skip-street   # lund_door only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mclnf_city.process import ProcessOptions, process, umeyama  # noqa: E402

ROT_TARGET_DEG = 2.0
CENTRE_TARGET = 0.05

Pose = Tuple[np.ndarray, np.ndarray]  # (camera-to-world rotation in COLMAP axes, centre)


def default_data_dir() -> Path:
    """/work/shared/data, or ../shared/data beside the main checkout."""
    for candidate in (Path("/work/shared/data"), ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/data")


def poses_from_colmap(sparse_dir: Path) -> Dict[str, Pose]:
    """Poses of a COLMAP model (text or binary) by image name."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(sparse_dir))
    poses = {}
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        world_from_cam = image.cam_from_world().inverse()
        poses[image.name] = (world_from_cam.rotation.matrix(), np.asarray(world_from_cam.translation))
    return poses


def poses_from_transforms(path: Path) -> Dict[str, Pose]:
    """Poses of a nerfstudio transforms.json, converted back to COLMAP camera axes."""
    meta = json.loads(Path(path).read_text())
    poses = {}
    for frame in meta["frames"]:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        rot = c2w[:3, :3].copy()
        rot[:, 1:3] *= -1  # OpenGL (y up, looking along -z) -> COLMAP (y down, looking along +z)
        poses[Path(frame["file_path"]).name] = (rot, c2w[:3, 3])
    return poses


def compare_poses(ours: Dict[str, Pose], truth: Dict[str, Pose]) -> Dict:
    """Per-image rotation (deg) and centre error (fraction of extent) after a similarity fit."""
    names = sorted(set(ours) & set(truth))
    if len(names) < 3:
        raise ValueError(f"need at least 3 images in common with the ground truth, have {len(names)}")
    src = np.array([ours[n][1] for n in names])
    tgt = np.array([truth[n][1] for n in names])
    scale, rot, t = umeyama(src, tgt)
    all_gt = np.array([c for _, c in truth.values()])
    extent = float(max(np.linalg.norm(a - b) for a in all_gt for b in all_gt))
    per_image = {}
    for name, s in zip(names, src):
        rel = truth[name][0].T @ (rot @ ours[name][0])
        angle = float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))))
        centre = float(np.linalg.norm(scale * rot @ s + t - truth[name][1]) / extent)
        per_image[name] = {"rotation_deg": angle, "centre_error_fraction": centre}
    rot_errors = [v["rotation_deg"] for v in per_image.values()]
    centre_errors = [v["centre_error_fraction"] for v in per_image.values()]
    return {
        "compared": len(names),
        "scene_extent": extent,
        "max_rotation_deg": max(rot_errors),
        "mean_rotation_deg": float(np.mean(rot_errors)),
        "max_centre_error_fraction": max(centre_errors),
        "mean_centre_error_fraction": float(np.mean(centre_errors)),
        "passes": max(rot_errors) <= ROT_TARGET_DEG and max(centre_errors) <= CENTRE_TARGET,
        "per_image": per_image,
    }


def run_capture(images: Path, out: Path, max_size, threads: int, matching: str = "auto") -> Dict:
    """Process one image folder; returns the run's summary plus its wall time."""
    start = time.perf_counter()
    summary = process(ProcessOptions(input=images, output=out, max_size=max_size, threads=threads, matching=matching, overwrite=True))
    record = summary.to_json()
    record["wall_seconds"] = time.perf_counter() - start
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder holding lund_door/ and lund_street/")
    parser.add_argument("--max-size", type=int, default=800, help="lund_door images are downscaled to this long side")
    parser.add_argument("--street-max-size", type=int, default=None, help="long side for lund_street (default: original 1024)")
    parser.add_argument("--threads", type=int, default=-1, help="pycolmap threads")
    parser.add_argument("--skip-street", action="store_true", help="only run lund_door")
    parser.add_argument("--work", type=Path, default=None, help="where the captures are written (default: a temp dir, deleted)")
    parser.add_argument("--out", type=Path, default=Path("bench_process.json"), help="JSON written here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_process_"))
    results: Dict = {"max_size": args.max_size, "targets": {"rotation_deg": ROT_TARGET_DEG, "centre_error_fraction": CENTRE_TARGET}}
    door = args.data / "lund_door"
    run = run_capture(door / "images", work / "lund_door", args.max_size, args.threads)
    accuracy = compare_poses(poses_from_transforms(work / "lund_door" / "transforms.json"), poses_from_colmap(door / "sparse" / "0"))
    results["lund_door"] = {"run": run, "accuracy": accuracy}
    print(f"\nlund_door: registered {run['registered']}/{run['images_in']}, "
          f"max rotation error {accuracy['max_rotation_deg']:.3f} deg, "
          f"max centre error {100 * accuracy['max_centre_error_fraction']:.3f} % of extent "
          f"({'PASS' if accuracy['passes'] else 'FAIL'}), {run['wall_seconds']:.1f} s")
    for name, err in accuracy["per_image"].items():
        print(f"    {name}: {err['rotation_deg']:.3f} deg, {100 * err['centre_error_fraction']:.3f} %")
    if not args.skip_street:
        run = run_capture(args.data / "lund_street" / "images", work / "lund_street", args.street_max_size, args.threads)
        results["lund_street"] = {"run": run}
        print(f"\nlund_street: registered {run['registered']}/{run['images_in']} (models {run['models']}), "
              f"reprojection error {run['mean_reprojection_error']:.3f} px, {run['points']} points, "
              f"{run['wall_seconds']:.1f} s, city frame {run['city_frame']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

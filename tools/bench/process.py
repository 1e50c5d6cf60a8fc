"""Accuracy and speed of `mclnf-process` on real photos.

lund_door has a ground-truth COLMAP model: our poses (read back from transforms.json,
so the OpenGL conversion and the city-frame alignment are checked too) are aligned to
it by a similarity on the camera centres (Umeyama), then per registered image
(`mclnf_city.pose_accuracy`):
- rotation error: angle of R_gt^T @ (R_align @ R_ours), camera-to-world, in degrees;
- centre error: distance after alignment / scene extent, where the extent is the
  largest distance between two ground-truth camera centres.
Target: <= 2 deg and <= 5 % for every registered image.

lund_street has no poses: registered images, reprojection error and time are recorded.

    python tools/bench/process.py --data /work/shared/data --max-size 800   # writes tools/bench/results/process.json
    python tools/bench/process.py --skip-street   # lund_door only
    python tools/bench/process.py --smoke --out /tmp/bench_process_smoke/bench_process.json   # seconds: the test suite runs this

--smoke runs on the photos in tests/data, 214x320 (long side 320): lund_door is the twelve of
lund_door_small/ and lund_door_more/, its ground truth their ground_truth_poses.json (written as a
COLMAP model, read as the real one is); the repository holds no street photos, so lund_street is
stood in for by the eight of lund_door_small/ (it has no ground truth either way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict

from mclnf_city.pose_accuracy import CENTRE_TARGET, ROT_TARGET_DEG, compare_poses, poses_from_colmap, poses_from_transforms
from mclnf_city.capture.process import ProcessOptions, process

from common import ROOT, RESULTS, default_data_dir, parse_args, write_json

TEST_DATA = ROOT / "tests" / "data"


def write_colmap_poses(poses_json, sparse_dir: Path, width: int, height: int) -> Path:
    """A COLMAP text model holding only the images' poses (world-to-camera, quaternion w x y z) of
    ground_truth_poses.json files; the camera is a placeholder, since only the poses are compared."""
    sparse_dir.mkdir(parents=True, exist_ok=True)
    poses = {name: p for path in poses_json for name, p in json.loads(Path(path).read_text())["poses"].items()}
    (sparse_dir / "cameras.txt").write_text(f"1 SIMPLE_PINHOLE {width} {height} {max(width, height)} {width / 2} {height / 2}\n")
    lines = [" ".join(map(str, [i, *p["qvec_wxyz"], *p["tvec"], 1, name])) + "\n" for i, (name, p) in enumerate(sorted(poses.items()), 1)]
    (sparse_dir / "images.txt").write_text("\n".join(lines) + "\n")  # each image's line of 2D points is empty
    (sparse_dir / "points3D.txt").write_text("")
    return sparse_dir


def smoke_data(out: Path) -> Path:
    """The --smoke data folder: lund_door/ (images, sparse/0) and lund_street/images from tests/data."""
    from PIL import Image

    door, more = TEST_DATA / "lund_door_small", TEST_DATA / "lund_door_more"
    for folder, photos in (("lund_door", [*door.glob("*.JPG"), *more.glob("*.JPG")]), ("lund_street", list(door.glob("*.JPG")))):
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
        for photo in photos:
            shutil.copy(photo, out / folder / "images" / photo.name)
    with Image.open(next(door.glob("*.JPG"))) as image:
        width, height = image.size
    write_colmap_poses([door / "ground_truth_poses.json", more / "ground_truth_poses.json"], out / "lund_door" / "sparse" / "0", width, height)
    return out


def run_capture(images: Path, out: Path, max_size, threads: int, matching: str = "auto") -> Dict:
    """Process one image folder; returns the run's summary plus its wall time."""
    start = time.perf_counter()
    summary = process(ProcessOptions(input=images, output=out, max_size=max_size, threads=threads, matching=matching, overwrite=True))
    record = summary.to_json()
    record["wall_seconds"] = time.perf_counter() - start
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder holding lund_door/ and lund_street/ (default: the shared data)")
    parser.add_argument("--max-size", type=int, default=800, help="lund_door images are downscaled to this long side")
    parser.add_argument("--street-max-size", type=int, default=None, help="long side for lund_street (default: original 1024)")
    parser.add_argument("--threads", type=int, default=-1, help="pycolmap threads")
    parser.add_argument("--skip-street", action="store_true", help="only run lund_door")
    parser.add_argument("--work", type=Path, default=None, help="where the captures are written (default: a temp dir, deleted)")
    parser.add_argument("--out", type=Path, default=RESULTS / "process.json", help="JSON written here")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on the photos in tests/data (see above): checks that the benchmark runs (other options still override)")
    args = parse_args(parser, max_size=320, out=Path(tempfile.gettempdir()) / "bench_process_smoke" / "bench_process.json")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A smoke run keeps its captures beside its output, so a test's temporary directory holds it all.
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_process_", dir=args.out.parent if args.smoke else None))
    if args.data is None:
        args.data = smoke_data(work / "data") if args.smoke else default_data_dir()
    results: Dict = {"max_size": args.max_size, "targets": {"rotation_deg": ROT_TARGET_DEG, "centre_error_fraction": CENTRE_TARGET}}
    if args.smoke:
        results["smoke"] = "photos of tests/data; lund_street stood in for by lund_door_small"
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
    write_json(args.out, results)
    print(f"\nwrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Photos or a video -> a nerfstudio capture, with pycolmap (no COLMAP binary needed).

Pipeline: gather images (or extract sharp frames from a video) -> SIFT features ->
matching -> incremental mapping -> keep the largest model -> align it to a *city frame*
(+z up, origin at the capture centre, metres when the photos carry GPS) -> write
``images/``, ``transforms.json``, ``sparse_pc.ply`` and ``colmap/sparse/0``.

Everything is written into a temporary directory beside the output and renamed at the
end, so a failed run never leaves a half-written capture that looks complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mclnf_city.capture.checks import CaptureError, name_list
from mclnf_city.capture.frame import apply_city_frame, city_frame, drop_images
from mclnf_city.capture.images import VIDEO_SUFFIXES, check_sizes, gather_input
from mclnf_city.capture.output import build_transforms, check_output, publish_with_summary, staged, write_sparse_ply
from mclnf_city.capture.register import register_into
from mclnf_city.capture.progress import ProcessSummary, Reporter, print_summary
from mclnf_city.capture.sfm import (
    CAMERA_MODELS,
    EXHAUSTIVE_MAX_IMAGES,
    MATCHING_METHODS,
    MIN_IMAGES,
    choose_matching,
    configure_colmap_logging,
    extract_features,
    match_features,
    read_gps,
    run_mapping,
)


# --------------------------------------------------------------------------- options


@dataclass
class ProcessOptions:
    """Everything `process` needs; the CLI fills it from argparse."""

    input: Path
    output: Path
    max_size: Optional[int] = None  # long side in pixels; None keeps the original size
    stride: int = 10  # video: keep every stride-th frame
    blur_threshold: float = 0.5  # video: drop frames sharper than this fraction of the median
    max_frames: Optional[int] = None  # video: cap on the candidate frames
    matching: str = "auto"
    camera_model: str = "SIMPLE_RADIAL"
    mixed_sizes: str = "per-image"  # or "refuse"
    sequential_overlap: int = 10
    spatial_max_distance: float = 100.0
    threads: int = -1
    seed: int = 0
    mapping_attempts: int = 3
    overwrite: bool = False
    keep_database: bool = False
    verbose: bool = False
    quiet: bool = False
    register_into: Optional[Path] = None  # an existing capture: register the new photos into its frame (register.py)
    name_prefix: str = ""  # --register-into: new photos are stored as images/<prefix><name>
    min_registered: int = 3  # --register-into: fail when fewer new photos register


def validate_options(options: ProcessOptions) -> None:
    """Reject bad option values before any work is done."""
    if options.matching not in MATCHING_METHODS:
        raise CaptureError(f"--matching must be one of {', '.join(MATCHING_METHODS)}, got {options.matching!r}")
    if options.camera_model not in CAMERA_MODELS:
        raise CaptureError(f"--camera-model must be one of {', '.join(CAMERA_MODELS)}, got {options.camera_model!r}")
    if options.mixed_sizes not in ("per-image", "refuse"):
        raise CaptureError(f"--mixed-sizes must be per-image or refuse, got {options.mixed_sizes!r}")
    if options.max_size is not None and options.max_size < 64:
        raise CaptureError(f"--max-size must be at least 64 pixels, got {options.max_size}")
    inputs = [("input", options.input)] + ([("--register-into capture", options.register_into)] if options.register_into else [])
    check_output(Path(options.output), inputs, options.overwrite)
    if options.min_registered < 1:
        raise CaptureError(f"--min-registered must be at least 1, got {options.min_registered}")


# --------------------------------------------------------------------------- driver


def process(options: ProcessOptions) -> ProcessSummary:
    """Run the whole pipeline; raises CaptureError with a clear message on bad input."""
    validate_options(options)
    if options.register_into is not None:
        return register_into(options)
    reporter = Reporter(quiet=options.quiet)
    configure_colmap_logging(options.verbose)
    output = Path(options.output)
    summary = ProcessSummary(output=str(output))
    with staged(output) as tmp:
        image_dir = tmp / "images"
        names, sizes, summary.video = gather_input(options, image_dir, reporter)
        summary.images_in = len(names)
        if len(names) < MIN_IMAGES:
            raise CaptureError(f"{options.input}: only {len(names)} usable image(s); structure from motion needs at least {MIN_IMAGES}")
        summary.camera_mode = check_sizes(sizes, options.mixed_sizes)
        if summary.camera_mode == "per-image":
            reporter.line(f"    images have {len(set(sizes.values()))} different sizes: one camera per image")

        colmap_dir = tmp / "colmap"
        colmap_dir.mkdir()
        database = colmap_dir / "database.db"
        with reporter.stage("features"):
            extract_features(database, image_dir, names, options.camera_model, summary.camera_mode, options.threads, reporter)
        gps = read_gps(database)
        summary.matching, summary.matching_reason = choose_matching(options.matching, summary.video is not None, len(names), len(gps))
        with reporter.stage(f"matching ({summary.matching})"):
            reporter.line(f"    {summary.matching}: {summary.matching_reason}; {len(gps)} of {len(names)} images have GPS")
            verified = match_features(database, summary.matching, options.threads, options.sequential_overlap, options.spatial_max_distance)
            reporter.line(f"    {verified} verified image pairs")
        with reporter.stage("incremental mapping"):
            rec, summary.dropped, summary.models, summary.mapping = run_mapping(
                database, image_dir, colmap_dir / "models", names, options.threads, options.seed,
                options.mapping_attempts, verified, reporter, gps,
            )
            shutil.rmtree(colmap_dir / "models")
            if len(summary.models) > 1:
                reporter.line(f"    {len(summary.models)} models ({', '.join(map(str, summary.models))} images): keeping the largest")
            if summary.dropped:
                reporter.line(f"    dropped {len(summary.dropped)} image(s) not in the largest model: {name_list(summary.dropped, limit=30)}")
        with reporter.stage("city frame and export"):
            scale, rot, origin, summary.city_frame, outliers = city_frame(rec, gps, seed=options.seed)
            if outliers:
                reporter.line(f"    dropped {len(outliers)} image(s) whose SfM position contradicts their GPS: {name_list(outliers)}")
                drop_images(rec, outliers)
                summary.dropped += outliers
                # Fit the frame again without them: they pulled on the up vector and the GPS fit.
                scale, rot, origin, frame, _ = city_frame(rec, gps, seed=options.seed)
                summary.city_frame = {**frame, "gps_outliers_dropped": summary.city_frame.get("gps_outliers", {})}
            apply_city_frame(rec, scale, rot, origin)
            summary.registered = rec.num_reg_images()
            summary.mean_reprojection_error = float(rec.compute_mean_reprojection_error())
            for name in summary.dropped:
                (image_dir / name).unlink()  # the capture lists only posed images
            summary.points = write_sparse_ply(rec, tmp / "sparse_pc.ply")
            sparse = colmap_dir / "sparse" / "0"
            sparse.mkdir(parents=True)
            rec.write(str(sparse))
            if not options.keep_database:
                database.unlink()
            meta = build_transforms(rec)
            meta["ply_file_path"] = "sparse_pc.ply"
            meta["city_frame"] = {**summary.city_frame, "origin": "mean camera centre", "axes": "x east / y north / z up" if summary.city_frame.get("heading_from") == "gps" else "z up, x along the camera path"}
            summary.city_frame = meta["city_frame"]
            (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))
        publish_with_summary(tmp, output, summary, reporter, options.overwrite)
    print_summary(summary, reporter)
    return summary


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The `mclnf-process` command line."""
    p = argparse.ArgumentParser(
        prog="mclnf-process",
        description=(
            "Turn a folder of photos or a video into a nerfstudio capture (images/, transforms.json, "
            "sparse_pc.ply, colmap/sparse/0) using pycolmap structure from motion. The result is aligned "
            "to a city frame: +z up, origin at the capture centre, metres when the photos carry GPS."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", type=Path, help="folder of images, or a video file (" + ", ".join(sorted(VIDEO_SUFFIXES)) + ")")
    p.add_argument("output", type=Path, help="capture directory to create (written to a temporary directory beside it, then renamed)")
    p.add_argument("--max-size", type=int, default=None, help="downscale images so the long side is at most this many pixels (None keeps the size)")
    p.add_argument("--stride", type=int, default=10, help="video only: keep every N-th frame")
    p.add_argument("--blur-threshold", type=float, default=0.5, help="video only: drop frames whose Laplacian variance is below this fraction of the median frame's")
    p.add_argument("--max-frames", type=int, default=None, help="video only: stop after this many candidate frames (None = whole video)")
    p.add_argument("--matching", choices=MATCHING_METHODS, default="auto",
                   help="pair selection: auto = sequential for video, spatial when every image has EXIF GPS, exhaustive for <= %d images, else sequential" % EXHAUSTIVE_MAX_IMAGES)
    p.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL", help="COLMAP camera model; distortion goes into transforms.json")
    p.add_argument("--mixed-sizes", choices=("per-image", "refuse"), default="per-image",
                   help="when images differ in size: give each its own camera, or stop with an error")
    p.add_argument("--sequential-overlap", type=int, default=10, help="sequential matching: match each image with this many following ones")
    p.add_argument("--spatial-max-distance", type=float, default=100.0, help="spatial matching: largest GPS distance (m) between matched images")
    p.add_argument("--threads", type=int, default=-1, help="CPU threads for pycolmap (-1 = all)")
    p.add_argument("--seed", type=int, default=0, help="random seed for mapping and the ground-plane fit")
    p.add_argument("--mapping-attempts", type=int, default=3,
                   help="incremental mapping runs (seeds seed, seed+1, ...) until every image registers; the best model is kept")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--keep-database", action="store_true", help="keep colmap/database.db (features and matches)")
    grow = p.add_argument_group(
        "growing a city",
        "With --register-into CAPTURE, the photos are registered into CAPTURE's frame (a capture made by "
        "mclnf-process): CAPTURE's cameras keep their poses exactly, the new ones land in the same city frame. "
        "OUTPUT is CAPTURE grown by the registered photos (CAPTURE's files hard-linked when possible, new frames "
        "marked \"capture\": k in transforms.json); train its new blocks with "
        "`ns-train mclnf-city --data OUTPUT --pipeline.grow-city OLD_RUN/city`.",
    )
    grow.add_argument("--register-into", type=Path, default=None, metavar="CAPTURE",
                      help="register the photos into this existing capture instead of starting a new one")
    grow.add_argument("--name-prefix", default="", help="store the new photos as images/<prefix><name> (needed when names clash with CAPTURE's)")
    grow.add_argument("--min-registered", type=int, default=3,
                      help="fail (writing nothing) when fewer of the new photos register (capped at their number)")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `mclnf-process`: exit 0 on success, 1 on bad input (message on stderr)."""
    args = build_parser().parse_args(argv)
    options = ProcessOptions(**{k: v for k, v in vars(args).items()})
    try:
        process(options)
    except CaptureError as e:
        print(f"mclnf-process: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

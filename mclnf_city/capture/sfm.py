"""Structure from motion with pycolmap: SIFT features, the choice of image pairs to match,
incremental mapping retried over seeds, and a final refinement of the intrinsics."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mclnf_city.capture.checks import CaptureError
from mclnf_city.capture.frame import city_frame
from mclnf_city.capture.progress import Reporter


CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MATCHING_METHODS = ("auto", "sequential", "exhaustive", "spatial")
# Exhaustive matching costs n^2 pairs: beyond this many images auto picks something cheaper.
EXHAUSTIVE_MAX_IMAGES = 50
MIN_IMAGES = 3


# --------------------------------------------------------------------------- features and matching


def configure_colmap_logging(verbose: bool) -> None:
    """COLMAP logs every step at INFO; keep only errors unless asked for more."""
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2


def extract_features(
    database: Path, image_dir: Path, names: Sequence[str], camera_model: str, camera_mode: str, threads: int, reporter: Reporter
) -> None:
    """Import all images (cameras, EXIF priors) at once, then SIFT image by image.

    Importing first fixes the camera assignment (one shared camera in single mode);
    extracting per image only exists to drive a progress bar.
    """
    import pycolmap

    mode = pycolmap.CameraMode.SINGLE if camera_mode == "single" else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    pycolmap.Database.open(str(database)).close()  # import_images wants an existing file
    pycolmap.import_images(str(database), str(image_dir), camera_mode=mode, image_names=list(names), options=reader)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    with reporter.progress("SIFT features", total=len(names)) as advance:
        for name in names:
            pycolmap.extract_features(
                str(database), str(image_dir), image_names=[name], camera_mode=mode,
                reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
            )
            advance(1)


def read_gps(database: Path) -> Dict[str, np.ndarray]:
    """EXIF GPS (lat, lon, alt) per image name, as pycolmap stored it in pose priors."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        gps = {}
        for prior in db.read_all_pose_priors():
            if prior.coordinate_system != pycolmap.PosePriorCoordinateSystem.WGS84 or not prior.has_position():
                continue
            image_id = prior.corr_data_id.id
            if image_id in names and np.all(np.isfinite(prior.position)):
                gps[names[image_id]] = np.asarray(prior.position, dtype=np.float64)
        return gps
    finally:
        db.close()


def choose_matching(requested: str, from_video: bool, num_images: int, num_gps: int) -> Tuple[str, str]:
    """The matching method and why: video -> sequential, GPS -> spatial, small -> exhaustive."""
    if requested != "auto":
        if requested == "spatial" and num_gps < num_images:
            raise CaptureError(
                f"--matching spatial needs GPS in every image's EXIF; {num_images - num_gps} of {num_images} have none"
            )
        return requested, "requested"
    if from_video:
        return "sequential", "frames of a video are ordered in time"
    if num_images and num_gps == num_images:
        return "spatial", "every image has EXIF GPS: match neighbours on the map"
    if num_images <= EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive", f"small set (<= {EXHAUSTIVE_MAX_IMAGES} images) without GPS: every pair is affordable"
    return "sequential", f"more than {EXHAUSTIVE_MAX_IMAGES} images without GPS: assume they were taken in order"


def match_features(database: Path, method: str, threads: int, sequential_overlap: int, spatial_max_distance: float) -> int:
    """Match and geometrically verify image pairs; returns the number of verified pairs."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    if method == "exhaustive":
        pycolmap.match_exhaustive(str(database), matching_options=matching, device=pycolmap.Device.cpu)
    elif method == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = sequential_overlap
        pycolmap.match_sequential(str(database), matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    elif method == "spatial":
        pairing = pycolmap.SpatialPairingOptions()
        pairing.max_distance = spatial_max_distance
        pairing.num_threads = threads
        pycolmap.match_spatial(str(database), matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    else:
        raise ValueError(f"unknown matching method {method!r}")
    db = pycolmap.Database.open(str(database))
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


# --------------------------------------------------------------------------- mapping


def cameras_have_focal_prior(database: Path) -> bool:
    """Whether every camera's focal length came from EXIF (not COLMAP's 1.2 x size guess)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        cameras = db.read_all_cameras()
        return bool(cameras) and all(c.has_prior_focal_length for c in cameras)
    finally:
        db.close()


def map_once(database: Path, image_dir: Path, work_dir: Path, num_images: int, threads: int, seed: int,
             fix_intrinsics: bool, reporter: Reporter) -> Dict:
    """One incremental mapping run; returns every model found (COLMAP may split the scene)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
    # COLMAP discards models under 10 images; small captures would lose everything.
    options.min_model_size = max(MIN_IMAGES, min(10, num_images // 3))
    if fix_intrinsics:
        # Refining focal length and distortion from the first two or three views lets them
        # drift, after which no further image registers (lund_street: 2-4 of 29 images
        # over 8 seeds, against 21-29 with the EXIF focal held fixed). They are refined
        # once, at the end, by `refine_intrinsics`.
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    with reporter.progress(f"registering images (seed {seed})", total=num_images) as advance:
        return pycolmap.incremental_mapping(
            str(database), str(image_dir), str(work_dir), options=options, next_image_callback=lambda: advance(1)
        )


def model_score(rec, gps: Dict[str, np.ndarray], seed: int) -> int:
    """Registered images that can be trusted: those agreeing with GPS when there is GPS.

    A model can register many images and still be broken (on lund_street one seed put
    the last 7 images on a branch tilted 50 deg, at 0.7 px reprojection error); GPS
    exposes that, image counts alone do not.
    """
    if sum(rec.image(i).name in gps for i in rec.reg_image_ids()) < 3:
        return rec.num_reg_images()
    return rec.num_reg_images() - len(city_frame(rec, gps, seed)[4])


def run_mapping(database: Path, image_dir: Path, work_dir: Path, names: Sequence[str], threads: int, seed: int,
                attempts: int, verified_pairs: int, reporter: Reporter, gps: Optional[Dict[str, np.ndarray]] = None):
    """Incremental mapping, retried with other seeds until every image registers.

    The initial image pair is chosen at random, and a poor one can strand most of the
    capture; a run costs seconds next to feature matching, so a few are affordable
    (`attempts`, and up to three times as many while no model holds half the images).
    Returns the best model (most trusted images, see `model_score`, then lowest
    reprojection error), the images it lacks, the model sizes of the run it came from,
    and the per-attempt record.
    """
    gps = gps or {}
    if verified_pairs == 0:
        raise CaptureError(
            f"no model: none of the {len(names)} images overlaps another (no image pair passed geometric "
            "verification); do the photos show the same place, and are they sharp and textured?"
        )
    fix_intrinsics = cameras_have_focal_prior(database)
    best, record = None, []
    # A run that strands most images (seen on street captures: 3 of 29 in three seeds running)
    # earns more attempts, up to three times as many.
    for attempt in range(3 * max(1, attempts)):
        if attempt >= max(1, attempts):
            if best is not None and 2 * best[0][0] >= len(names):
                break
            if attempt == max(1, attempts):
                held = 0 if best is None else best[0][0]
                reporter.line(f"    the best model holds {held} of {len(names)} images: trying more seeds")
        models = map_once(database, image_dir, work_dir, len(names), threads, seed + attempt, fix_intrinsics, reporter)
        sizes = sorted((rec.num_reg_images() for rec in models.values()), reverse=True)
        record.append({"seed": seed + attempt, "models": sizes})
        if models:
            rec = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
            key = (model_score(rec, gps, seed), -rec.compute_mean_reprojection_error())
            record[-1]["trusted"] = key[0]
            if best is None or key > best[0]:
                best = (key, rec, sizes)
        trusted = f", {record[-1]['trusted']} consistent with GPS" if gps and "trusted" in record[-1] else ""
        reporter.line(f"    attempt {attempt + 1} (seed {seed + attempt}): models of {sizes or [0]} images{trusted}")
        if best is not None and best[0][0] == len(names):
            break
    if best is None or best[0][0] < 2:
        raise CaptureError(
            f"no model: structure from motion could not register the {len(names)} images "
            f"({verified_pairs} image pair(s) passed geometric verification); "
            "do the photos overlap, and are they sharp and textured?"
        )
    _, rec, sizes = best
    if fix_intrinsics:
        refine_intrinsics(rec, threads)
    registered = {rec.image(i).name for i in rec.reg_image_ids()}
    dropped = [n for n in names if n not in registered]
    return rec, dropped, sizes, {"attempts": record, "intrinsics": "EXIF prior held during mapping, refined in a final bundle adjustment" if fix_intrinsics else "refined during mapping"}


def refine_intrinsics(rec, threads: int) -> None:
    """Global bundle adjustment refining focal length and distortion with the poses.

    A soft-L1 loss (1 px) keeps the few observations that the new intrinsics turn into
    outliers from pulling the solution.
    """
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = True
    options.refine_extra_params = True
    options.print_summary = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.SOFT_L1
    options.ceres.loss_function_scale = 1.0
    options.ceres.solver_options.num_threads = threads
    level = pycolmap.logging.minloglevel
    pycolmap.bundle_adjustment(rec, options)
    pycolmap.logging.minloglevel = level  # pycolmap's wrapper switches COLMAP's INFO log back on
    rec.update_point_3d_errors()  # the mean reprojection error reported reads these

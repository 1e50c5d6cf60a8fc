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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mclnf_city.capture import CaptureError, _names
from mclnf_city.files import publish, staging_dir, write_ply

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MATCHING_METHODS = ("auto", "sequential", "exhaustive", "spatial")
# Exhaustive matching costs n^2 pairs: beyond this many images auto picks something cheaper.
EXHAUSTIVE_MAX_IMAGES = 50
MIN_IMAGES = 3


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


@dataclass
class ProcessSummary:
    """What happened, for the final printout, `process_summary.json` and the benchmarks."""

    images_in: int = 0
    registered: int = 0
    dropped: List[str] = field(default_factory=list)
    points: int = 0
    mean_reprojection_error: float = float("nan")
    matching: str = ""
    matching_reason: str = ""
    models: List[int] = field(default_factory=list)  # registered images per model found
    camera_mode: str = ""
    mapping: Dict = field(default_factory=dict)
    city_frame: Dict = field(default_factory=dict)
    video: Optional[Dict] = None
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    output: str = ""

    def to_json(self) -> Dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Reporter:
    """Stage lines with timings (and rich progress bars on a terminal); silent when quiet."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=False, highlight=False, quiet=quiet, soft_wrap=True)
        self.seconds: Dict[str, float] = {}

    def line(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; its duration lands in `seconds` even when it fails."""
        self.line(f"[bold]==> {name}[/bold]")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.line(f"    {name}: {self.seconds[name]:.1f} s")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar (only drawn on a terminal); yields `advance(n)`."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.quiet or not self.console.is_terminal:
            yield lambda n=1: None
            return
        columns = (TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


# --------------------------------------------------------------------------- input


def list_images(folder: Path) -> Tuple[List[Path], List[Path]]:
    """Image files directly in `folder` (sorted), and the other files that were ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptureError(f"{folder}: input folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        extra = f" (found only {_names([p.name for p in others])})" if others else ""
        raise CaptureError(f"{folder}: no images found{extra}; expected {', '.join(sorted(IMAGE_SUFFIXES))}")
    return images, others


def read_image_sizes(paths: Sequence[Path]) -> Dict[str, Tuple[int, int]]:
    """(width, height) per file name; decodes every image so broken files fail here, named."""
    sizes, bad = {}, []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()  # a truncated file opens fine and only fails on decode
                sizes[path.name] = im.size
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            bad.append(f"{path} ({type(e).__name__}: {e})")
    if bad:
        raise CaptureError(f"cannot read image(s): {_names(bad)}")
    return sizes


def prepare_images(paths: Sequence[Path], dst: Path, max_size: Optional[int]) -> Dict[str, Tuple[int, int]]:
    """Copy images into `dst`, downscaling those whose long side exceeds `max_size`.

    EXIF is kept on downscaled copies: pycolmap reads the focal length prior and the
    GPS position from it. Pixel rotation is left alone (like COLMAP and nerfstudio,
    which both ignore the EXIF orientation tag), so poses and pixels stay consistent.
    """
    dst.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for path in paths:
        with Image.open(path) as im:
            w, h = im.size
            if max_size is None or max(w, h) <= max_size:
                shutil.copy2(path, dst / path.name)
                sizes[path.name] = (w, h)
                continue
            scale = max_size / max(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = im.convert("RGB") if im.mode not in ("RGB", "L") else im
            small = small.resize(new, resample=Image.Resampling.LANCZOS)
            save = {"exif": im.info["exif"]} if "exif" in im.info else {}
            if path.suffix.lower() in (".jpg", ".jpeg"):
                save["quality"] = 95
            small.save(dst / path.name, **save)
            sizes[path.name] = new
    return sizes


def laplacian_sharpness(frame_bgr: np.ndarray, long_side: int = 640) -> float:
    """Variance of the Laplacian of the grey image: low for blurred frames.

    Measured at a fixed resolution so the score does not depend on the video's size.
    """
    import cv2

    grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    h, w = grey.shape
    if max(h, w) > long_side:
        s = long_side / max(h, w)
        grey = cv2.resize(grey, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def select_sharp(scores: Sequence[float], relative_threshold: float) -> List[bool]:
    """Keep frames whose sharpness is at least `relative_threshold` x the median.

    A relative threshold adapts to the video: an absolute Laplacian variance depends on
    the scene's texture and the camera, a ratio to the typical frame does not.
    """
    if not len(scores):
        return []
    median = float(np.median(scores))
    return [s >= relative_threshold * median for s in scores]


def extract_video_frames(
    video: Path,
    dst: Path,
    stride: int = 10,
    blur_threshold: float = 0.5,
    max_frames: Optional[int] = None,
    reporter: Optional[Reporter] = None,
) -> Dict:
    """Write every `stride`-th frame of `video` to `dst` as JPEG, minus the blurry ones.

    Returns counts: frames read, candidates (after stride), kept, and the dropped names.
    """
    import cv2

    if stride < 1:
        raise CaptureError(f"--stride must be >= 1, got {stride}")
    video = Path(video)
    if not video.is_file():
        raise CaptureError(f"{video}: video file not found")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise CaptureError(f"{video}: OpenCV cannot open this video (unsupported codec or not a video file)")
    dst.mkdir(parents=True, exist_ok=True)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    names, scores, read = [], [], 0
    reporter = reporter or Reporter(quiet=True)
    try:
        with reporter.progress("reading frames", total=max(total, 1)) as advance:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if read % stride == 0:
                    name = f"frame_{read:06d}.jpg"
                    if not cv2.imwrite(str(dst / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                        raise CaptureError(f"{dst / name}: cannot write extracted frame")
                    names.append(name)
                    scores.append(laplacian_sharpness(frame))
                read += 1
                advance(1)
                if max_frames is not None and len(names) >= max_frames:
                    break
    finally:
        cap.release()
    if not names:
        raise CaptureError(f"{video}: no frames could be decoded")
    keep = select_sharp(scores, blur_threshold)
    dropped = [n for n, k in zip(names, keep) if not k]
    for name in dropped:
        (dst / name).unlink()
    return {
        "video": str(video),
        "frames_read": read,
        "candidates": len(names),
        "kept": len(names) - len(dropped),
        "dropped_blurry": dropped,
        "stride": stride,
        "blur_threshold": blur_threshold,
        "median_sharpness": float(np.median(scores)),
    }


def check_sizes(sizes: Dict[str, Tuple[int, int]], mixed_sizes: str) -> str:
    """"single" when every image has one size (shared intrinsics), else "per-image" or refuse."""
    distinct = sorted(set(sizes.values()))
    if len(distinct) == 1:
        return "single"
    if mixed_sizes == "refuse":
        examples = []
        for size in distinct[:4]:
            name = next(n for n, s in sizes.items() if s == size)
            examples.append(f"{name} is {size[0]}x{size[1]}")
        raise CaptureError(
            f"images have {len(distinct)} different sizes ({'; '.join(examples)}); "
            "use --mixed-sizes per-image to give each image its own camera, or resize them"
        )
    return "per-image"


# --------------------------------------------------------------------------- SfM


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


# --------------------------------------------------------------------------- city frame


def umeyama(src: np.ndarray, tgt: np.ndarray, with_scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``tgt ~ s * R @ src + t`` (Umeyama 1991), any dimension.

    Returns (s, R, t). R is a proper rotation (det +1) even for noisy, near-planar points.
    """
    src, tgt = np.asarray(src, np.float64), np.asarray(tgt, np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    xs, xt = src - mu_s, tgt - mu_t
    cov = xt.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_t - scale * rot @ mu_s
    return scale, rot, t


def gps_to_enu(lat_lon_alt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """WGS84 (lat, lon, alt) -> local east/north/up metres around `reference`."""
    import pycolmap

    return np.asarray(pycolmap.GPSTransform().ellipsoid_to_enu(np.asarray(lat_lon_alt, np.float64), *map(float, reference)))


def camera_centres_and_ups(rec) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Names, then centres, up, right and viewing directions [N, 3] in the model's world."""
    names, centres, ups, rights, views = [], [], [], [], []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.image(image_id)
        world_from_cam = image.cam_from_world().inverse()
        rot = world_from_cam.rotation.matrix()
        names.append(image.name)
        centres.append(world_from_cam.translation)
        rights.append(rot[:, 0])
        ups.append(-rot[:, 1])  # COLMAP cameras look along +z with +y pointing down the image
        views.append(rot[:, 2])
    return names, np.array(centres), np.array(ups), np.array(rights), np.array(views)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b), -1.0, 1.0))))


def fit_ground_plane(
    points: np.ndarray, up_hint: np.ndarray, centres: np.ndarray, max_angle_deg: float = 5.0, iterations: int = 500, seed: int = 0
) -> Optional[Dict]:
    """RANSAC for a plane below the cameras whose normal is near `up_hint`.

    Facades are the largest planes in a city capture; only near-horizontal planes under
    the cameras count as ground. Returns None when no plane has enough support.
    """
    if len(points) < 50:
        return None
    up = _unit(up_hint)
    centre = centres.mean(0)
    below = points[(points - centre) @ up < 0]
    if len(below) < 50:
        return None
    spread = np.percentile(np.linalg.norm(below - np.median(below, 0), axis=1), 90)
    tol = 0.01 * spread
    rng = np.random.default_rng(seed)
    best_inliers, cos_max = None, np.cos(np.radians(max_angle_deg))
    for _ in range(iterations):
        a, b, c = below[rng.choice(len(below), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-12:
            continue
        normal = _unit(normal)
        if abs(normal @ up) < cos_max:
            continue
        inliers = np.abs((below - a) @ normal) < tol
        if best_inliers is None or inliers.sum() > best_inliers.sum():
            best_inliers = inliers
    if best_inliers is None or best_inliers.sum() < max(50, 0.1 * len(below)):
        return None
    support = below[best_inliers]
    _, spread_sv, vt = np.linalg.svd(support - support.mean(0), full_matrices=False)
    if spread_sv[1] < 0.2 * spread_sv[0]:
        return None  # inliers along a line (a kerb, a wall's foot): many planes fit, none is known
    normal = vt[-1]  # least-squares refit on the inliers
    normal = normal if normal @ up > 0 else -normal
    if _angle_deg(normal, up) > max_angle_deg:
        return None
    return {"normal": normal, "inliers": int(best_inliers.sum()), "candidates": int(len(below)), "height": float(support.mean(0) @ normal)}


def rotation_from_up(up: np.ndarray, forward_hint: np.ndarray) -> np.ndarray:
    """World -> city rotation whose rows are city x, y, z; z = up, x = hint projected flat."""
    z = _unit(up)
    x = forward_hint - (forward_hint @ z) * z
    if np.linalg.norm(x) < 1e-6:  # hint parallel to up: any horizontal axis will do
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x = _unit(x)
    return np.stack([x, np.cross(z, x), z])


def isolated_cameras(centres: np.ndarray, factor: float = 8.0) -> np.ndarray:
    """Cameras far from every other one compared with the typical spacing: likely misregistered.

    A wrongly registered image lands tens of metres off the path; one such camera would
    dominate the path direction and tilt the estimated up.
    """
    if len(centres) < 4:
        return np.zeros(len(centres), dtype=bool)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(1)
    return nearest > factor * max(float(np.median(nearest)), 1e-12)


def camera_up(ups: np.ndarray, rights: np.ndarray, views: np.ndarray, centres: np.ndarray) -> Tuple[np.ndarray, Dict]:
    """Up from the cameras: perpendicular to their right axes and to the path they follow.

    People hold cameras level (little roll) but tilt them up and down freely, so the
    right axes lie in the horizontal plane while the mean up vector leans with the mean
    pitch (7 deg on lund_door, where facade planes come out vertical with this method).
    When all cameras face one way (a street walk) the right axes fix only one direction;
    the camera path, walked or flown at roughly constant height, supplies the other.
    The sign comes from the cameras' up vectors and viewing directions (they look
    level or down), which also works for nadir drone photos.
    """
    m_right = rights.T @ rights / len(rights)
    spread = centres - centres.mean(0)
    m_path = spread.T @ spread
    m_path = m_path / np.trace(m_path) if np.trace(m_path) > 0 else np.zeros((3, 3))
    evals, evecs = np.linalg.eigh(m_right + m_path)  # ascending
    up = evecs[:, 0]
    if up @ (ups.mean(0) - views.mean(0)) < 0:
        up = -up
    info = {
        "camera_up_agreement": float(np.linalg.norm(ups.mean(0))),  # 1 = all cameras upright alike
        "camera_up_vs_mean_up_deg": _angle_deg(up, ups.mean(0)),
        "camera_up_conditioning": float(evals[1] / max(evals[0], 1e-12)),  # large = well determined
    }
    return up, info


def geometric_up(rec, centres: np.ndarray, ups: np.ndarray, rights: np.ndarray, views: np.ndarray, seed: int) -> Tuple[np.ndarray, Dict]:
    """Up from the cameras, refined by a ground-plane fit when one is found close to it."""
    up, info = camera_up(ups, rights, views, centres)
    points = np.array([p.xyz for p in rec.points3D.values()]) if rec.num_points3D() else np.zeros((0, 3))
    plane = fit_ground_plane(points, up, centres, seed=seed)
    if plane is None:
        info["up_from"] = "cameras"
        return up, info
    info.update(
        up_from="ground_plane",
        ground_inliers=plane["inliers"],
        ground_vs_camera_up_deg=_angle_deg(plane["normal"], up),
    )
    return plane["normal"], info


def robust_similarity(src: np.ndarray, tgt: np.ndarray, threshold: float = 12.0, trials: int = 500, seed: int = 0):
    """RANSAC over minimal sets + Umeyama on the inliers: ``tgt ~ s * R @ src + t``.

    Phone GPS is good to ~10 m, while a misregistered image, or a whole branch of a
    broken model, is off by tens of metres. Least squares spreads such errors over every
    image (no residual then stands out); RANSAC with an absolute threshold in metres
    finds the images that agree. Returns (s, R, t, inlier mask).
    """
    n, dim = src.shape
    rng = np.random.default_rng(seed)
    best = np.ones(n, dtype=bool)
    best_count = -1
    for _ in range(trials if n > dim else 0):
        sample = rng.choice(n, dim, replace=False)
        if np.linalg.svd(src[sample] - src[sample].mean(0), compute_uv=False)[0] < 1e-9:
            continue
        scale, rot, t = umeyama(src[sample], tgt[sample])
        inliers = np.linalg.norm(scale * src @ rot.T + t - tgt, axis=1) <= threshold
        if inliers.sum() > best_count:
            best, best_count = inliers, int(inliers.sum())
    if best.sum() < dim:
        best = np.ones(n, dtype=bool)
    for _ in range(3):  # refit on the inliers, then re-select with the refined fit
        scale, rot, t = umeyama(src[best], tgt[best])
        inliers = np.linalg.norm(scale * src @ rot.T + t - tgt, axis=1) <= threshold
        if inliers.sum() < dim or (inliers == best).all():
            break
        best = inliers
    return scale, rot, t, best


def horizontal_axis(centres: np.ndarray, views: np.ndarray, up: np.ndarray) -> np.ndarray:
    """City x: the main direction of the camera path on the ground, or the mean view direction."""
    flat = centres - centres.mean(0)
    flat = flat - np.outer(flat @ _unit(up), _unit(up))
    if len(flat) >= 2:
        _, s, vt = np.linalg.svd(flat, full_matrices=False)
        if s[0] > 1e-9 and (len(s) < 2 or s[1] < 0.8 * s[0]):
            return vt[0]
    return views.mean(0)


def city_frame(rec, gps: Dict[str, np.ndarray], seed: int = 0) -> Tuple[float, np.ndarray, np.ndarray, Dict, List[str]]:
    """Similarity taking the SfM world to the city frame: ``p_city = s * R @ (p - origin)``.

    With GPS on >= 3 registered images, camera centres are aligned to local ENU metres
    (robust Umeyama): scale becomes metres, x east, y north. GPS up is trusted only if
    the positions span an area (a straight street walk leaves the roll about the street
    free) and agree with the cameras; otherwise the geometric up is kept and GPS only
    supplies heading and scale (a 2D similarity on the ground plane). Images whose SfM
    position disagrees with GPS beyond the fit's tolerance are returned to be dropped.
    """
    names, centres, ups, rights, views = camera_centres_and_ups(rec)
    isolated = isolated_cameras(centres)
    good = ~isolated
    origin = centres[good].mean(0)
    up, info = geometric_up(rec, centres[good], ups[good], rights[good], views[good], seed)
    if isolated.any():
        info["isolated_cameras"] = [names[i] for i in np.flatnonzero(isolated)]
    with_gps = [i for i, n in enumerate(names) if n in gps]
    if len(with_gps) >= 3:
        lla = np.array([gps[names[i]] for i in with_gps])
        reference = lla.mean(0)
        enu = gps_to_enu(lla, reference)
        horizontal = np.linalg.svd(enu[:, :2] - enu[:, :2].mean(0), compute_uv=False)
        if horizontal[0] > 1.0:  # GPS positions spread over more than a metre or so
            src = centres[with_gps]
            gps_info = {"gps_images": len(with_gps), "enu_reference_wgs84": [float(v) for v in reference]}
            scale, rot, t, inliers = robust_similarity(src, enu, seed=seed)
            gps_up = rot.T @ np.array([0.0, 0.0, 1.0])  # ENU up seen in the SfM world
            gps_info["gps_up_vs_geometric_up_deg"] = _angle_deg(gps_up, up)
            planar = horizontal[1] > 0.2 * horizontal[0]
            if planar and gps_info["gps_up_vs_geometric_up_deg"] < 15.0:
                residual = np.linalg.norm(scale * src @ rot.T + t - enu, axis=1)
                info.update(gps_info, up_from="gps", heading_from="gps", scale="metres")
                origin = src[inliers].mean(0)
            else:
                # Keep the geometric up; fit heading and scale on the ground plane only.
                flat_rot = rotation_from_up(up, np.array([1.0, 0.0, 0.0]))
                src2 = (src - origin) @ flat_rot.T
                scale, rot2, t2, inliers = robust_similarity(src2[:, :2], enu[:, :2], seed=seed)
                rot3 = np.eye(3)
                rot3[:2, :2] = rot2
                rot = rot3 @ flat_rot
                residual = np.linalg.norm(scale * src2[:, :2] @ rot2.T + t2 - enu[:, :2], axis=1)
                info.update(gps_info, heading_from="gps", scale="metres",
                            gps_up_rejected="positions nearly on a line" if not planar else "disagrees with the cameras")
            info["gps_rms_m"] = float(np.sqrt((residual[inliers] ** 2).mean()))
            outliers = [names[with_gps[i]] for i in np.flatnonzero(~inliers)]
            if outliers:
                info["gps_outliers"] = {names[with_gps[i]]: float(residual[i]) for i in np.flatnonzero(~inliers)}
            return scale, rot, origin, info, outliers
        info["gps_ignored"] = "GPS positions do not spread (all within about a metre)"
    rot = rotation_from_up(up, horizontal_axis(centres[good], views[good], up))
    info.update(heading_from="camera_path", scale="arbitrary")
    return 1.0, rot, origin, info, []


def drop_images(rec, names: Sequence[str]) -> None:
    """Deregister images (their frames) from the model, e.g. those contradicting GPS."""
    for image_id in list(rec.reg_image_ids()):
        image = rec.image(image_id)
        if image.name in names:
            rec.deregister_frame(image.frame_id)


def apply_city_frame(rec, scale: float, rot: np.ndarray, origin: np.ndarray) -> None:
    """Move the whole reconstruction (cameras and points) into the city frame."""
    import pycolmap

    sim = pycolmap.Sim3d(scale, pycolmap.Rotation3d(rot), -scale * rot @ origin)
    rec.transform(sim)


# --------------------------------------------------------------------------- writing


def camera_intrinsics(camera) -> Dict:
    """nerfstudio intrinsics for a COLMAP camera (OPENCV when there is distortion)."""
    model, p = camera.model_name, [float(v) for v in camera.params]
    out = {"w": int(camera.width), "h": int(camera.height)}
    if model == "SIMPLE_PINHOLE":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], camera_model="PINHOLE")
    elif model == "PINHOLE":
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], camera_model="PINHOLE")
    elif model == "SIMPLE_RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=0.0, p1=0.0, p2=0.0, camera_model="OPENCV")
    elif model == "RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4], p1=0.0, p2=0.0, camera_model="OPENCV")
    elif model == "OPENCV":
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], p1=p[6], p2=p[7], camera_model="OPENCV")
    else:
        raise CaptureError(f"camera model {model} is not supported; use one of {', '.join(CAMERA_MODELS)}")
    return out


def opengl_camera_to_world(image) -> np.ndarray:
    """4x4 camera-to-world in nerfstudio's convention (camera looks along -z, y up).

    COLMAP stores world-to-camera with the camera looking along +z and y down: invert,
    then flip the camera's y and z axes.
    """
    c2w = np.eye(4)
    c2w[:3, :] = image.cam_from_world().inverse().matrix()
    c2w[:3, 1:3] *= -1
    return c2w


def build_transforms(rec, image_prefix: str = "images") -> Dict:
    """transforms.json content: shared intrinsics at the top if there is one camera."""
    images = sorted((rec.image(i) for i in rec.reg_image_ids()), key=lambda im: im.name)
    camera_ids = {im.camera_id for im in images}
    meta: Dict = {}
    if len(camera_ids) == 1:
        meta.update(camera_intrinsics(rec.camera(next(iter(camera_ids)))))
    frames = []
    for im in images:
        frame = {
            "file_path": f"{image_prefix}/{im.name}",
            "transform_matrix": opengl_camera_to_world(im).tolist(),
            "colmap_im_id": int(im.image_id),
        }
        if len(camera_ids) > 1:
            frame.update(camera_intrinsics(rec.camera(im.camera_id)))
        frames.append(frame)
    meta["frames"] = frames
    return meta


def write_sparse_ply(rec, path: Path) -> int:
    """Sparse points with colours as a binary PLY (what nerfstudio's load_3D_points reads)."""
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts]).reshape(-1, 3)
    rgb = np.array([p.color for p in pts]).reshape(-1, 3)
    write_ply(path, xyz, rgb)
    return len(pts)


# --------------------------------------------------------------------------- driver


def publish_with_summary(tmp: Path, output: Path, summary: "ProcessSummary", reporter: "Reporter", overwrite: bool) -> None:
    """Write process_summary.json (with the stage times) into the staged output, then publish it."""
    summary.stage_seconds = dict(reporter.seconds)
    (tmp / "process_summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    try:
        publish(tmp, output, overwrite)
    except FileExistsError as e:
        raise CaptureError(str(e)) from None


def gather_input(options: ProcessOptions, image_dir: Path, reporter: Reporter) -> Tuple[List[str], Dict[str, Tuple[int, int]], Optional[Dict]]:
    """Images of the folder (checked, copied or downscaled) or sharp frames of the video."""
    src = Path(options.input)
    if src.is_file() and src.suffix.lower() in VIDEO_SUFFIXES:
        with reporter.stage("extract video frames"):
            raw = image_dir.parent / "video_frames"
            video = extract_video_frames(src, raw, options.stride, options.blur_threshold, options.max_frames, reporter)
            reporter.line(
                f"    kept {video['kept']} of {video['candidates']} frames (every {options.stride}th of "
                f"{video['frames_read']}; {len(video['dropped_blurry'])} blurry dropped)"
            )
            paths = sorted(raw.iterdir())
            sizes = prepare_images(paths, image_dir, options.max_size)
            shutil.rmtree(raw)
        return sorted(sizes), sizes, video
    if src.is_file():
        raise CaptureError(f"{src}: not a folder of images nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    if not src.exists():
        raise CaptureError(f"{src}: input not found")
    with reporter.stage("check and copy images"):
        paths, others = list_images(src)
        if others:
            reporter.line(f"    ignoring {len(others)} non-image file(s): {_names([p.name for p in others])}")
        read_image_sizes(paths)
        sizes = prepare_images(paths, image_dir, options.max_size)
        reporter.line(f"    {len(paths)} images" + (f", long side <= {options.max_size} px" if options.max_size else ""))
    return sorted(sizes), sizes, None


def check_output(output: Path, inputs: List[Tuple[str, Path]], overwrite: bool) -> None:
    """Refuse, before anything is touched, an output that publishing would break: one that is,
    holds or lies inside an input (replacing it would delete the input), or an existing folder
    that is not a capture this tool wrote (--overwrite replaces only those)."""
    out = output.resolve()
    for label, path in inputs:
        src = Path(path).resolve()
        relation = "is" if out == src else "contains" if out in src.parents else "lies inside" if src in out.parents else None
        if relation:
            raise CaptureError(f"{output}: the output {relation} the {label} {path}; choose an output folder apart from it")
    if not output.exists():
        return
    if not overwrite:
        raise CaptureError(f"{output}: already exists; pass --overwrite to replace it")
    if not output.is_dir() or (any(output.iterdir()) and not (output / "process_summary.json").is_file()):
        raise CaptureError(f"{output}: exists and is not a capture mclnf-process wrote (no process_summary.json); "
                           "--overwrite replaces only those: choose another output")


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


def process(options: ProcessOptions) -> ProcessSummary:
    """Run the whole pipeline; raises CaptureError with a clear message on bad input."""
    validate_options(options)
    if options.register_into is not None:
        from mclnf_city.register import register_into

        return register_into(options)
    reporter = Reporter(quiet=options.quiet)
    configure_colmap_logging(options.verbose)
    output = Path(options.output)
    tmp = staging_dir(output)
    summary = ProcessSummary(output=str(output))
    try:
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
                reporter.line(f"    dropped {len(summary.dropped)} image(s) not in the largest model: {_names(summary.dropped, limit=30)}")
        with reporter.stage("city frame and export"):
            scale, rot, origin, summary.city_frame, outliers = city_frame(rec, gps, seed=options.seed)
            if outliers:
                reporter.line(f"    dropped {len(outliers)} image(s) whose SfM position contradicts their GPS: {_names(outliers)}")
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_summary(summary, reporter)
    return summary


def print_summary(summary: ProcessSummary, reporter: Reporter) -> None:
    """The final report: counts, accuracy and where the time went."""
    frame = summary.city_frame
    reporter.line("[bold]==> summary[/bold]")
    reporter.line(f"    images in:        {summary.images_in}")
    reporter.line(f"    registered:       {summary.registered} ({len(summary.dropped)} dropped)")
    reporter.line(f"    sparse points:    {summary.points}")
    reporter.line(f"    reprojection err: {summary.mean_reprojection_error:.3f} px (mean)")
    reporter.line(f"    city frame:       up from {frame.get('up_from')}, heading from {frame.get('heading_from')}, scale {frame.get('scale')}")
    for name, seconds in summary.stage_seconds.items():
        reporter.line(f"    time {name + ':':<26}{seconds:7.1f} s")
    reporter.line(f"    total time:       {sum(summary.stage_seconds.values()):.1f} s")
    reporter.line(f"    wrote {summary.output}")


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

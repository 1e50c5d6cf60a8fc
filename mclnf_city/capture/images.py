"""The input images: a folder of photos (checked, copied or downscaled) or the sharp frames of
a video; and a capture's image read for training."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from mclnf_city.capture.checks import CaptureError, name_list
from mclnf_city.capture.progress import Reporter


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}


# --------------------------------------------------------------------------- a folder of photos


def list_images(folder: Path) -> Tuple[List[Path], List[Path]]:
    """Image files directly in `folder` (sorted), and the other files that were ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptureError(f"{folder}: input folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        extra = f" (found only {name_list([p.name for p in others])})" if others else ""
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
        raise CaptureError(f"cannot read image(s): {name_list(bad)}")
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


# --------------------------------------------------------------------------- a video


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


# --------------------------------------------------------------------------- either


def gather_input(options, image_dir: Path, reporter: Reporter) -> Tuple[List[str], Dict[str, Tuple[int, int]], Optional[Dict]]:
    """Images of the folder (checked, copied or downscaled) or sharp frames of the video.

    `options` is a ProcessOptions (process.py); its input, max_size and video options are read.
    """
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
            reporter.line(f"    ignoring {len(others)} non-image file(s): {name_list([p.name for p in others])}")
        read_image_sizes(paths)
        sizes = prepare_images(paths, image_dir, options.max_size)
        reporter.line(f"    {len(paths)} images" + (f", long side <= {options.max_size} px" if options.max_size else ""))
    return sorted(sizes), sizes, None


# --------------------------------------------------------------------------- training


def check_image_file(path: Path, size: Tuple[int, int], scale_factor: float = 1.0) -> None:
    """The image can be decoded to its end and is `size` (w, h) after `scale_factor`, or a
    CaptureError naming it. Cheaper than reading it: a PNG's chunks are checked against their
    CRCs without inflating, a JPEG is decoded at 1/8 scale (still every byte of its scan)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            found = (int(im.size[0] * scale_factor), int(im.size[1] * scale_factor))
            if im.format == "PNG":
                im.verify()
            else:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
    except FileNotFoundError:
        raise CaptureError(f"{path}: image file missing") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise CaptureError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if found != tuple(size):
        raise CaptureError(f"{path}: image is {found[0]}x{found[1]} but its camera (w, h) says {size[0]}x{size[1]}")


def load_image_uint8(path: Path, scale_factor: float = 1.0) -> torch.Tensor:
    """[H, W, 3] uint8, resized like nerfstudio's InputDataset when scale_factor != 1."""
    path = Path(path)
    if not path.exists():
        raise CaptureError(f"{path}: image file missing")
    try:
        with Image.open(path) as im:
            if scale_factor != 1.0:
                w, h = im.size
                im = im.resize((int(w * scale_factor), int(h * scale_factor)), resample=Image.Resampling.BILINEAR)
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise CaptureError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr.copy())

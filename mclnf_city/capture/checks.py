"""Checks on a capture before anything trains: clear errors naming the file at fault.

nerfstudio's parsers accept a NaN pose silently (and its auto-orientation then spreads
the NaN to every camera) and open images only when first sampled. We check the raw
`transforms.json` and every image up front instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from PIL import Image


MIN_FRAMES = 4


class CaptureError(ValueError):
    """The capture on disk is unusable; the message names the file and the problem."""


def read_json(path: Path) -> Dict[str, Any]:
    """A capture's JSON file (transforms.json), or a CaptureError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CaptureError(f"{path}: not valid JSON ({e})") from e


def check_capture(dataparser, data: Path) -> None:
    """Checks before nerfstudio's dataparser runs, for the two layouts users bring.

    `dataparser` is a nerfstudio DataParserConfig; `data` the capture path.
    """
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    data = Path(data)
    if not data.exists():
        raise CaptureError(f"{data}: capture not found")
    if isinstance(dataparser, ColmapDataParserConfig):
        check_colmap_layout(dataparser, data)
    else:
        check_transforms_json(data)


def check_colmap_layout(dataparser, data: Path) -> None:
    """COLMAP layout: the model and image folders exist, and no interactive prompt awaits.

    nerfstudio's colmap parser picks a downscale factor for images over 1600 px and, when
    the `images_N` folder is missing, asks on stdin whether to create it: a hang or an
    EOFError in a batch job. We stop first with what to do instead.
    """
    model = data / dataparser.colmap_path
    images = data / dataparser.images_path
    if not any((model / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
        raise CaptureError(
            f"{model}: no COLMAP model (cameras.bin or cameras.txt) here; set --colmap-path to the folder "
            "holding cameras/images/points3D relative to the capture"
        )
    if not images.is_dir():
        raise CaptureError(f"{images}: image folder missing; set --images-path")
    if dataparser.downscale_factor is not None:
        return
    from nerfstudio.data.dataparsers.colmap_dataparser import MAX_AUTO_RESOLUTION

    first = next((p for p in sorted(images.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")), None)
    if first is None:
        raise CaptureError(f"{images}: no .jpg or .png images")
    with Image.open(first) as im:
        factor = 1
        while max(im.size) / factor > MAX_AUTO_RESOLUTION:  # the same rule as nerfstudio's parser
            factor *= 2
    folder = images.parent / f"{images.name}_{factor}"
    if factor > 1 and not folder.is_dir():
        raise CaptureError(
            f"{first}: images are {im.size[0]}x{im.size[1]}; nerfstudio's colmap parser would ask to create "
            f"{folder}. Pass `colmap --downscale-factor 1` (full size), or create {folder} first"
        )


def check_transforms_json(data: Path) -> None:
    """Validate a nerfstudio capture's transforms.json, if the capture has one."""
    data = Path(data)
    path = data / "transforms.json" if data.is_dir() else data
    if data.is_dir() and not path.exists():
        return  # not a nerfstudio-data capture (e.g. colmap layout): nothing to check here
    if not path.exists():
        raise CaptureError(f"{path}: capture not found")
    meta = read_json(path)
    frames = meta.get("frames")
    if not frames or len(frames) < MIN_FRAMES:
        # nerfstudio's parser divides by the pose spread: one camera is a ZeroDivisionError there.
        raise CaptureError(f"{path}: capture too small to partition: {len(frames or [])} frame(s), need at least {MIN_FRAMES}")
    bad_pose, missing = [], []
    for i, frame in enumerate(frames):
        name = frame.get("file_path", f"frame {i}")
        m = frame.get("transform_matrix")
        try:
            ok = m is not None and len(m) in (3, 4) and all(len(r) == 4 and all(math.isfinite(float(v)) for v in r) for r in m)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad_pose.append(name)
        if not (path.parent / name).exists():
            missing.append(str(path.parent / name))
    if bad_pose:
        raise CaptureError(f"{path}: non-finite or malformed transform_matrix for {name_list(bad_pose)}")
    if missing:
        raise CaptureError(f"{path}: image files missing: {name_list(missing)}")


def check_cameras(camera_to_worlds: torch.Tensor, image_names: Sequence) -> None:
    """Poses after parsing must be finite (any dataparser)."""
    bad = (~torch.isfinite(camera_to_worlds.reshape(len(camera_to_worlds), -1)).all(-1)).nonzero().flatten().tolist()
    if bad:
        raise CaptureError(f"non-finite camera pose for {name_list([str(image_names[i]) for i in bad])}")


def name_list(names: Sequence[str], limit: int = 8) -> str:
    """Names for an error message: the first `limit`, then how many more."""
    shown = ", ".join(names[:limit])
    return f"{shown} (and {len(names) - limit} more)" if len(names) > limit else shown

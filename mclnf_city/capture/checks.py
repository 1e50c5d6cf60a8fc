"""Checks on a capture before anything trains: clear errors naming the file at fault.

nerfstudio's parsers accept a NaN pose silently (and its auto-orientation then spreads
the NaN to every camera) and open images only when first sampled. We check the raw
`transforms.json` and every image up front instead.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
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
    if not isinstance(frames, list) or len(frames) < MIN_FRAMES:
        # nerfstudio's parser divides by the pose spread: one camera is a ZeroDivisionError there.
        count = len(frames) if isinstance(frames, list) else 0
        raise CaptureError(f"{path}: 'frames' holds {count} frame(s); a capture to partition needs at least {MIN_FRAMES}")
    root = os.path.normpath(os.path.abspath(path.parent))
    bad_pose, missing, outside, seen, duplicate = [], [], [], set(), []
    for i, frame in enumerate(frames):
        name = frame.get("file_path", f"frame {i}")
        m = frame.get("transform_matrix")
        try:
            ok = m is not None and len(m) in (3, 4) and all(len(r) == 4 and all(math.isfinite(float(v)) for v in r) for r in m)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad_pose.append(name)
        for field, positive in (("fl_x", True), ("fl_y", True), ("cx", False), ("cy", False), ("w", True), ("h", True)):
            check_intrinsic(path, frame, meta, field, positive, name)
        full = os.path.normpath(os.path.join(root, name))
        if os.path.commonpath([root, full]) != root:
            outside.append(name)
        elif full in seen:
            duplicate.append(name)
        elif not os.path.exists(full):
            missing.append(full)
        seen.add(full)
    if bad_pose:
        raise CaptureError(f"{path}: non-finite or malformed transform_matrix for {name_list(bad_pose)}")
    if outside:
        raise CaptureError(f"{path}: file_path outside the capture folder {root}: {name_list(outside)}")
    if duplicate:
        raise CaptureError(f"{path}: file_path named by more than one frame: {name_list(duplicate)}")
    if missing:
        raise CaptureError(f"{path}: image files missing: {name_list(missing)}")
    if meta.get("ply_file_path"):
        check_points_ply(path.parent / meta["ply_file_path"], path)


def check_intrinsic(path: Path, frame: Dict[str, Any], meta: Dict[str, Any], field: str, positive: bool, name: str) -> None:
    """A camera value (per frame, else for the whole capture) is present, finite, and > 0 where it must be."""
    value = frame.get(field, meta.get(field))
    if value is None:
        raise CaptureError(f"{path}: no '{field}' for {name} (neither in its frame nor for the whole capture)")
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (positive and v <= 0):
        raise CaptureError(f"{path}: '{field}' of {name} is {value!r}; it must be a finite number{' > 0' if positive else ''}")


def check_points_ply(ply: Path, transforms: Path) -> None:
    """The sparse points named by ply_file_path: there, with at least one point, all finite."""
    from plyfile import PlyData

    if not ply.exists():
        raise CaptureError(f"{transforms}: ply_file_path names {ply}, which does not exist")
    try:
        vertex = PlyData.read(str(ply))["vertex"]
        xyz = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in ("x", "y", "z")], axis=-1)
    except Exception as e:  # noqa: BLE001 - plyfile raises many types for broken files
        raise CaptureError(f"{ply}: cannot read the sparse points ({type(e).__name__}: {e})") from e
    if len(xyz) == 0:
        raise CaptureError(f"{ply}: holds 0 points; remove ply_file_path from {transforms} to train without points")
    bad = int((~np.isfinite(xyz).all(axis=1)).sum())
    if bad:
        raise CaptureError(f"{ply}: {bad} of {len(xyz)} points have a non-finite coordinate")


def check_cameras(camera_to_worlds: torch.Tensor, image_names: Sequence) -> None:
    """Poses after parsing must be finite (any dataparser)."""
    bad = (~torch.isfinite(camera_to_worlds.reshape(len(camera_to_worlds), -1)).all(-1)).nonzero().flatten().tolist()
    if bad:
        raise CaptureError(f"non-finite camera pose for {name_list([str(image_names[i]) for i in bad])}")


def name_list(names: Sequence[str], limit: int = 8) -> str:
    """Names for an error message: the first `limit`, then how many more."""
    shown = ", ".join(names[:limit])
    return f"{shown} (and {len(names) - limit} more)" if len(names) > limit else shown

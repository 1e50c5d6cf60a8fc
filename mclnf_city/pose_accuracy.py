"""Camera poses against a ground truth: rotation and centre errors after a similarity fit.

Our poses are read back from a capture's transforms.json (so the OpenGL conversion and the
city-frame alignment are checked too) and aligned to the ground truth by a similarity on the
camera centres (Umeyama); then per image:
- rotation error: angle of R_gt^T @ (R_align @ R_ours), camera-to-world, in degrees;
- centre error: distance after alignment / scene extent, where the extent is the
  largest distance between two ground-truth camera centres.
Target: <= 2 deg and <= 5 % for every registered image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from mclnf_city.capture.frame import umeyama

ROT_TARGET_DEG = 2.0
CENTRE_TARGET = 0.05

Pose = Tuple[np.ndarray, np.ndarray]  # (camera-to-world rotation in COLMAP axes, centre)


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


def scene_extent(truth: Dict[str, Pose]) -> float:
    """The largest distance between two ground-truth camera centres."""
    all_gt = np.array([c for _, c in truth.values()])
    return float(max(np.linalg.norm(a - b) for a in all_gt for b in all_gt))


def pose_error(ours: Pose, truth: Pose, similarity: Tuple[float, np.ndarray, np.ndarray], extent: float) -> Dict[str, float]:
    """Rotation (deg) and centre error (fraction of `extent`) of one pose after the similarity (scale, rotation, shift)."""
    scale, rot, t = similarity
    rel = truth[0].T @ (rot @ ours[0])
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))))
    centre = float(np.linalg.norm(scale * rot @ ours[1] + t - truth[1]) / extent)
    return {"rotation_deg": angle, "centre_error_fraction": centre}


def fit_similarity(ours: Dict[str, Pose], truth: Dict[str, Pose], names: Sequence[str]):
    """The similarity (scale, rotation, shift) taking our camera centres of `names` onto the ground truth's."""
    return umeyama(np.array([ours[n][1] for n in names]), np.array([truth[n][1] for n in names]))


def compare_poses(ours: Dict[str, Pose], truth: Dict[str, Pose]) -> Dict:
    """Per-image rotation (deg) and centre error (fraction of extent) after a similarity fit."""
    names = sorted(set(ours) & set(truth))
    if len(names) < 3:
        raise ValueError(f"need at least 3 images in common with the ground truth, have {len(names)}")
    similarity = fit_similarity(ours, truth, names)
    extent = scene_extent(truth)
    per_image = {name: pose_error(ours[name], truth[name], similarity, extent) for name in names}
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

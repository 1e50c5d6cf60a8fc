"""Point cloud: the expected surface point of every pixel of (a subset of) the cameras, with its
rendered colour and normal."""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from mclnf_city.export.city import ExportError, LoadedCity


def select_cameras(city: LoadedCity, split: str, max_cameras: Optional[int]):
    """Cameras of the train or test split (or both), evenly thinned to at most max_cameras."""
    from nerfstudio.cameras.cameras import Cameras

    dm = city.pipeline.datamanager
    sets = {"train": [dm.train_dataset.cameras], "test": [dm.eval_dataset.cameras]}
    sets["all"] = sets["train"] + sets["test"]
    cams = sets[split]
    c2w = torch.cat([c.camera_to_worlds for c in cams])
    fields = {k: torch.cat([getattr(c, k) for c in cams]) for k in ("fx", "fy", "cx", "cy", "width", "height")}
    if len(c2w) == 0:
        raise ExportError(f"--cameras {split}: the capture has no cameras in that split")
    pick = np.arange(len(c2w))
    if max_cameras is not None and max_cameras < len(c2w):
        pick = np.unique(np.linspace(0, len(c2w) - 1, max_cameras).round().astype(int))
    return Cameras(camera_to_worlds=c2w[pick], **{k: v[pick] for k, v in fields.items()})


@torch.no_grad()
def export_pointcloud(
    city: LoadedCity, num_points: int, split: str, max_cameras: Optional[int], downscale: int,
    min_opacity: float, bbox: Optional[Sequence[float]], seed: int = 0, progress: bool = True,
) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Points where camera rays end (expected depth), with their rendered colour, output frame.

    Only rays that hit something (accumulated opacity >= min_opacity) give a point: the far
    field (sky) never does. Points are a uniform random subset of all candidates (a running
    top-k on random keys, so memory stays at num_points whatever the number of cameras).
    """
    from rich.progress import track

    if num_points <= 0:
        raise ExportError(f"--num-points must be positive, got {num_points}")
    started = time.time()
    cameras = select_cameras(city, split, max_cameras)
    if downscale > 1:
        cameras.rescale_output_resolution(1.0 / downscale)
    rng = np.random.default_rng(seed)
    keep_xyz, keep_rgb, keep_key = np.zeros((0, 3)), np.zeros((0, 3), np.float32), np.zeros(0)
    candidates = 0
    for c in track(range(len(cameras)), description="rendering cameras", disable=not progress):
        camera = cameras[c : c + 1]
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        out = city.model.get_outputs_for_camera_ray_bundle(rays)
        hit = (out["accumulation"][..., 0] >= min_opacity).numpy()
        xyz = (rays.origins + rays.directions * out["depth"]).numpy()[hit].astype(np.float64)
        xyz = city.frame.to_output(xyz)
        rgb = out["rgb"].numpy()[hit]
        if bbox is not None:
            inside = np.all((xyz >= np.asarray(bbox[:3])) & (xyz <= np.asarray(bbox[3:])), axis=1)
            xyz, rgb = xyz[inside], rgb[inside]
        candidates += len(xyz)
        keys = rng.random(len(xyz))
        keep_xyz, keep_rgb, keep_key = np.concatenate([keep_xyz, xyz]), np.concatenate([keep_rgb, rgb]), np.concatenate([keep_key, keys])
        if len(keep_key) > num_points:
            top = np.argpartition(keep_key, num_points)[:num_points]
            keep_xyz, keep_rgb, keep_key = keep_xyz[top], keep_rgb[top], keep_key[top]
    if len(keep_xyz) == 0:
        raise ExportError(f"no camera ray hit a surface (opacity >= {min_opacity}{' inside --bbox' if bbox else ''}): nothing to write")
    colors = (np.clip(keep_rgb, 0, 1) * 255).round().astype(np.uint8)
    summary = {"points": int(len(keep_xyz)), "candidates": candidates, "cameras": len(cameras), "split": split,
               "frame": city.frame.name, "seconds": round(time.time() - started, 2)}
    return keep_xyz, colors, summary

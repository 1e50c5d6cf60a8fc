"""Orthographic map: colour and height seen straight down, on a regular ground grid."""

from __future__ import annotations

import math
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from mclnf_city.export.city import ExportError, LoadedCity, city_to_world


def down_rays(city: LoadedCity, pixel_size: float, bbox: Optional[Sequence[float]]):
    """Orthographic rays straight down (along -up of the city frame) on a pixel grid over the
    city box (or the bbox's ground footprint). Row 0 is the city's +y edge (north up when the
    capture frame is east-north-up), column 0 its -x edge. Returns (RayBundle [H, W], xy grid)."""
    from nerfstudio.cameras.rays import RayBundle

    box = city.partition.city_box().numpy()
    lo, hi = box[0, :2].copy(), box[1, :2].copy()
    if bbox is not None:
        corners = np.array([[(bbox[3 + a] if (c >> a) & 1 else bbox[a]) for a in range(3)] for c in range(8)], float)
        city_pts = city.partition.to_city(torch.from_numpy(city.frame.to_nerfstudio(corners))).numpy()
        lo, hi = np.maximum(lo, city_pts.min(0)[:2]), np.minimum(hi, city_pts.max(0)[:2])
        if np.any(hi <= lo):
            raise ExportError(f"--bbox {list(bbox)} lies outside the city box")
    step = pixel_size  # nerfstudio units
    width, height = int(math.ceil((hi[0] - lo[0]) / step)), int(math.ceil((hi[1] - lo[1]) / step))
    if width * height > 16_000_000:
        raise ExportError(f"--resolution gives a {width}x{height} map: too large (at most 16 Mpixel)")
    if width < 1 or height < 1:
        raise ExportError("--resolution larger than the city: the map would be empty")
    x = lo[0] + (np.arange(width) + 0.5) * step
    y = hi[1] - (np.arange(height) + 0.5) * step
    xx, yy = np.meshgrid(x, y)
    top = box[1, 2] + 0.01 * (box[1, 2] - box[0, 2])  # just above the city box
    origins_city = np.stack([xx, yy, np.full_like(xx, top)], axis=-1)
    origins = city_to_world(city.partition, origins_city)
    down = city_to_world(city.partition, np.array([0.0, 0.0, -1.0])) - city.partition.origin.numpy()
    o = torch.from_numpy(origins.astype(np.float32))
    d = torch.from_numpy(np.broadcast_to(down, origins.shape).astype(np.float32).copy())
    bundle = RayBundle(
        origins=o, directions=d, pixel_area=torch.full((height, width, 1), step * step),
        camera_indices=torch.zeros((height, width, 1), dtype=torch.long),
    )
    return bundle, (lo, hi)


@torch.no_grad()
def export_map(city: LoadedCity, pixel_size_out: float, min_opacity: float, bbox: Optional[Sequence[float]]):
    """Bird's-eye orthographic RGB [H, W, 3] uint8, height [H, W] float32 (z of the surface in the
    output frame, NaN where no surface), and the map's metadata."""
    if pixel_size_out <= 0:
        raise ExportError(f"--resolution must be positive, got {pixel_size_out}")
    started = time.time()
    bundle, (lo, hi) = down_rays(city, pixel_size_out * city.frame.scale, bbox)
    out = city.model.get_outputs_for_camera_ray_bundle(bundle)
    rgb = (np.clip(out["rgb"].numpy(), 0, 1) * 255).round().astype(np.uint8)
    hit_ns = (bundle.origins + bundle.directions * out["depth"]).numpy().astype(np.float64)
    z = city.frame.to_output(hit_ns.reshape(-1, 3))[:, 2].reshape(hit_ns.shape[:2]).astype(np.float32)
    height = np.where(out["accumulation"][..., 0].numpy() >= min_opacity, z, np.nan).astype(np.float32)
    corners_city = np.array([[lo[0], hi[1], 0.0], [hi[0], hi[1], 0.0], [lo[0], lo[1], 0.0], [hi[0], lo[1], 0.0]])
    corners = city.frame.to_output(city_to_world(city.partition, corners_city))[:, :2]
    meta = {
        "frame": city.frame.name,
        "units_per_pixel": pixel_size_out,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "corners_xy": {"top_left": corners[0].tolist(), "top_right": corners[1].tolist(),
                       "bottom_left": corners[2].tolist(), "bottom_right": corners[3].tolist()},
        "pixels_with_surface": int(np.isfinite(height).sum()),
        "seconds": round(time.time() - started, 2),
    }
    return rgb, height, meta


def height_to_uint16(height: np.ndarray) -> Tuple[np.ndarray, Dict]:
    """16-bit height image: 0 = no surface, else z = z_min + (value - 1) * z_step."""
    finite = np.isfinite(height)
    if not finite.any():
        return np.zeros(height.shape, np.uint16), {"z_min": None, "z_step": None, "no_data": 0}
    z_min, z_max = float(height[finite].min()), float(height[finite].max())
    z_step = max(z_max - z_min, 1e-9) / 65534
    values = np.zeros(height.shape, np.uint16)
    values[finite] = (np.round((height[finite] - z_min) / z_step) + 1).astype(np.uint16)
    return values, {"z_min": z_min, "z_step": z_step, "no_data": 0, "formula": "z = z_min + (value - 1) * z_step"}

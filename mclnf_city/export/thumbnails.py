"""Thumbnails: one oblique view of every finished block, as a contact sheet."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch

from mclnf_city.export.city import ExportError, LoadedCity, city_to_world
from mclnf_city.store import DONE


def look_at_block(city: LoadedCity, b: int, width: int, height: int, elevation_deg: float = 45.0, fov_deg: float = 60.0):
    """A pinhole camera (nerfstudio frame) looking down at block b's centre from the south."""
    from nerfstudio.cameras.cameras import Cameras

    region = city.partition.regions()[b].numpy()
    centre = region.mean(0)
    centre[2] = region[0, 2] + 0.25 * (region[1, 2] - region[0, 2])
    half = 0.5 * float(np.max(region[1, :2] - region[0, :2]))
    distance = half / math.tan(math.radians(fov_deg / 2))  # the block's width fills the view
    e = math.radians(elevation_deg)
    eye = centre + distance * np.array([0.0, -math.cos(e), math.sin(e)])
    back = (eye - centre) / np.linalg.norm(eye - centre)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w_city = np.stack([right, up, back, eye], axis=1)  # columns, city frame
    rotation = city.partition.rotation.numpy()
    c2w = np.concatenate([rotation.T @ c2w_city[:, :3], city_to_world(city.partition, eye)[:, None]], axis=1)
    focal = 0.5 * width / math.tan(math.radians(fov_deg / 2))
    return Cameras(camera_to_worlds=torch.from_numpy(c2w[None].astype(np.float32)), fx=focal, fy=focal,
                   cx=width / 2, cy=height / 2, width=width, height=height)


@torch.no_grad()
def export_thumbnails(city: LoadedCity, tile_width: int, tile_height: int, progress: bool = True) -> Tuple[np.ndarray, Dict]:
    """One tile per block, laid out like the city grid (+y up, +x right), labelled id and status."""
    from PIL import Image, ImageDraw
    from rich.progress import track

    if tile_width < 16 or tile_height < 16:
        raise ExportError(f"--tile-size must be at least 16x16, got {tile_width}x{tile_height}")
    nx, ny = city.partition.grid
    sheet = Image.new("RGB", (nx * tile_width, ny * tile_height), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    statuses = {}
    for b in track(range(city.partition.num_blocks), description="rendering blocks", disable=not progress):
        status = city.store.status(b)
        statuses[str(b)] = status
        bx, by = city.partition.cell(b)  # a grown city leaves some grid cells without a block
        x0, y0 = bx * tile_width, (ny - 1 - by) * tile_height
        if status == DONE:
            out = city.model.get_outputs_for_camera(look_at_block(city, b, tile_width, tile_height))
            tile = (np.clip(out["rgb"].numpy(), 0, 1) * 255).round().astype(np.uint8)
            sheet.paste(Image.fromarray(tile), (x0, y0))
        label = f"block {b}: {status}"
        draw.rectangle([x0, y0, x0 + 7 * len(label) + 6, y0 + 14], fill=(0, 0, 0))
        draw.text((x0 + 3, y0 + 2), label, fill=(255, 255, 255) if status == DONE else (255, 200, 0))
        draw.rectangle([x0, y0, x0 + tile_width - 1, y0 + tile_height - 1], outline=(255, 255, 255))
    return np.asarray(sheet), {"blocks": statuses, "grid": [nx, ny], "tile_size": [tile_width, tile_height]}

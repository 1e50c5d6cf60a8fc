#!/usr/bin/env python3
"""Procedural synthetic city generator -> nerfstudio capture directory.

Builds a deterministic (seeded) city of axis-aligned box buildings on a grid of
city blocks separated by streets, renders it with a vectorised numpy ray caster
from a drone lawnmower flight plus street-level walks, and writes a capture that
nerfstudio 1.1.5's ``nerfstudio-data`` dataparser loads as is, together with
ground truth (triangle mesh, layout, optional depth maps).

World frame
    z up, metres, ground plane at z = 0, origin at the centre of the city.
    The city occupies ``[-W/2, W/2] x [-D/2, D/2]`` with
    ``W = blocks_x * (block_size + street_width) + street_width`` (a street runs
    around the perimeter and between all blocks; D likewise with blocks_y).

Cameras (``transforms.json``)
    Pinhole ``OPENCV`` model, no distortion, shared intrinsics; ``fov_deg`` is the
    horizontal field of view.  ``transform_matrix`` is camera-to-world in the
    nerfstudio / OpenGL convention: columns are camera +x (right), +y (up),
    +z (backwards; the camera looks along -z) and the centre, in world metres.
    Pixel (col, row) has its centre at (col + 0.5, row + 0.5), the same as
    nerfstudio's ray generation.  Frames are numbered in capture order: drone
    flight lines first (boustrophedon), then street paths; nerfstudio sorts by
    file name, so its order equals the capture order.

Output layout (``--out DIR``)::

    images/frame_00000.png ...   8-bit RGB
    transforms.json              nerfstudio capture (ply_file_path: sparse_pc.ply)
    sparse_pc.ply                points on visible surfaces with colours
    gt/mesh.ply                  ground quad + building boxes (triangles)
    gt/city.json                 seed, style, bounds, buildings, streets, per-frame kind
    gt/depth/frame_00000.npy     float32 z-depth in metres, 0 = sky (--write-depth)
    README.md                    what this is and the command that made it

Example::

    python tools/make_city.py --seed 3 --blocks-x 3 --blocks-y 2 --out /tmp/city

Python API: ``generate_city(Path("/tmp/city"), seed=3, blocks_x=3)`` or with a
``CityOptions`` instance.  Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mclnf_city.files import write_ply

__all__ = [
    "STYLES",
    "CityOptions",
    "City",
    "Frame",
    "build_city",
    "make_cameras",
    "render_frame",
    "intersect",
    "generate_city",
    "main",
]


# --------------------------------------------------------------------------- styles
# Each style is a palette + height/lot statistics.  Colours are display-space RGB
# in [0, 1].  Kept as plain dicts so a meta-learning sampler can read them.
STYLES: Dict[str, Dict[str, Any]] = {
    "downtown": dict(
        heights=(10.0, 30.0),
        height_skew=1.3,  # >1 favours lower buildings, a few tall ones
        lots=(1, 3),
        empty_prob=0.12,
        setback=(0.0, 2.5),
        tower_prob=0.3,
        shop_prob=0.7,
        walls=[(0.62, 0.62, 0.60), (0.52, 0.56, 0.62), (0.72, 0.67, 0.58),
               (0.44, 0.48, 0.54), (0.80, 0.78, 0.74), (0.58, 0.50, 0.45)],
        glass=[(0.14, 0.22, 0.32), (0.22, 0.32, 0.40), (0.10, 0.13, 0.17), (0.25, 0.30, 0.30)],
        roofs=[(0.42, 0.42, 0.41), (0.30, 0.31, 0.33), (0.55, 0.53, 0.49)],
        yards=dict(plaza=0.5, parking=0.3, grass=0.2),
        floor_h=(3.2, 3.9),
        win_spacing=(1.8, 3.0),
        win_w=(0.5, 0.8),
        win_h=(0.5, 0.72),
        asphalt=0.27,
        centre_line=(0.92, 0.78, 0.20),
        sun=(150.0, 55.0),  # azimuth (deg from +x towards +y), elevation (deg)
        zenith=(0.30, 0.48, 0.78),
        horizon=(0.75, 0.83, 0.92),
        field_colors=[(0.36, 0.50, 0.22), (0.55, 0.55, 0.28), (0.45, 0.40, 0.28), (0.30, 0.45, 0.25)],
    ),
    "oldtown": dict(
        heights=(7.0, 18.0),
        height_skew=1.0,
        lots=(2, 4),
        empty_prob=0.08,
        setback=(0.0, 0.8),
        tower_prob=0.05,
        shop_prob=0.5,
        walls=[(0.88, 0.80, 0.62), (0.82, 0.62, 0.42), (0.90, 0.86, 0.76), (0.74, 0.50, 0.40),
               (0.80, 0.74, 0.55), (0.66, 0.70, 0.62)],
        glass=[(0.16, 0.16, 0.18), (0.20, 0.22, 0.25), (0.28, 0.24, 0.20)],
        roofs=[(0.62, 0.30, 0.20), (0.52, 0.26, 0.18), (0.45, 0.34, 0.28), (0.70, 0.40, 0.26)],
        yards=dict(plaza=0.55, grass=0.35, parking=0.10),
        floor_h=(3.0, 3.5),
        win_spacing=(2.2, 3.2),
        win_w=(0.35, 0.5),
        win_h=(0.5, 0.65),
        asphalt=0.33,
        centre_line=(0.95, 0.95, 0.93),
        sun=(200.0, 42.0),
        zenith=(0.36, 0.52, 0.80),
        horizon=(0.86, 0.84, 0.80),
        field_colors=[(0.50, 0.55, 0.25), (0.65, 0.58, 0.30), (0.40, 0.50, 0.24), (0.55, 0.45, 0.30)],
    ),
    "suburb": dict(
        heights=(4.0, 10.0),
        height_skew=1.0,
        lots=(2, 3),
        empty_prob=0.15,
        setback=(2.0, 4.5),
        tower_prob=0.0,
        shop_prob=0.1,
        walls=[(0.92, 0.91, 0.88), (0.80, 0.86, 0.90), (0.90, 0.84, 0.70), (0.66, 0.42, 0.34),
               (0.78, 0.82, 0.72), (0.88, 0.76, 0.74)],
        glass=[(0.18, 0.22, 0.26), (0.12, 0.15, 0.18)],
        roofs=[(0.30, 0.28, 0.27), (0.45, 0.30, 0.24), (0.36, 0.38, 0.42), (0.55, 0.50, 0.44)],
        yards=dict(grass=0.75, plaza=0.10, parking=0.15),
        floor_h=(2.8, 3.2),
        win_spacing=(2.5, 3.8),
        win_w=(0.35, 0.5),
        win_h=(0.45, 0.6),
        asphalt=0.30,
        centre_line=(0.95, 0.95, 0.95),
        sun=(120.0, 50.0),
        zenith=(0.28, 0.50, 0.85),
        horizon=(0.78, 0.86, 0.94),
        field_colors=[(0.32, 0.52, 0.22), (0.42, 0.56, 0.26), (0.28, 0.44, 0.20), (0.50, 0.52, 0.30)],
    ),
}
_YARD_TYPES = ("grass", "plaza", "parking")


# --------------------------------------------------------------------------- options
@dataclass
class CityOptions:
    """All generation parameters (the CLI flags map 1:1 onto these fields)."""

    # layout
    blocks_x: int = 3
    blocks_y: int = 3
    block_size: float = 40.0
    street_width: float = 12.0
    sidewalk_width: float = 3.0
    style: str = "downtown"
    min_height: Optional[float] = None
    max_height: Optional[float] = None
    ground_margin: float = 80.0
    # rendering
    image_width: int = 128
    image_height: int = 96
    fov_deg: float = 60.0
    supersample: int = 2
    shadows: bool = True
    # drone lawnmower
    drone: bool = True
    drone_altitude: Optional[float] = None
    drone_altitude_factor: float = 1.7
    drone_line_spacing: Optional[float] = None
    drone_step: Optional[float] = None
    drone_margin: Optional[float] = None
    drone_pitch_min: float = 40.0
    drone_pitch_max: float = 55.0
    drone_rotate: bool = True
    # street level
    street_paths: str = "all"
    street_step: float = 20.0
    street_headings: Tuple[float, ...] = (0.0, 90.0, -90.0)
    street_height: float = 1.8
    street_pitch_forward: float = 3.0
    street_pitch_side: float = 18.0
    # outputs
    num_points: int = 5000
    write_depth: bool = False

    def validate(self) -> None:
        """Raise ValueError with a readable message on any bad value."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        for name in ("blocks_x", "blocks_y"):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
                 f"{name} must be an integer >= 1 (number of city blocks), got {v!r}")
        need(self.street_width > 0, f"street_width must be > 0 m, got {self.street_width}")
        need(self.sidewalk_width >= 0, f"sidewalk_width must be >= 0 m, got {self.sidewalk_width}")
        need(self.block_size - 2 * self.sidewalk_width >= 6.0,
             f"block_size ({self.block_size}) must exceed 2*sidewalk_width + 6 m so buildings fit")
        need(self.style in STYLES or self.style == "random",
             f"style must be one of {sorted(STYLES) + ['random']}, got {self.style!r}")
        if self.min_height is not None:
            need(self.min_height >= 1.0, f"min_height must be >= 1 m, got {self.min_height}")
        if self.max_height is not None:
            need(self.max_height >= 1.0, f"max_height must be >= 1 m, got {self.max_height}")
        if self.min_height is not None and self.max_height is not None:
            need(self.min_height <= self.max_height,
                 f"min_height ({self.min_height}) must be <= max_height ({self.max_height})")
        need(self.ground_margin >= 0, f"ground_margin must be >= 0, got {self.ground_margin}")
        need(self.image_width >= 8 and self.image_height >= 8,
             f"image size must be at least 8x8, got {self.image_width}x{self.image_height}")
        need(0 < self.fov_deg < 170, f"fov_deg must be in (0, 170), got {self.fov_deg}")
        need(1 <= self.supersample <= 8, f"supersample must be in 1..8, got {self.supersample}")
        if self.drone_altitude is not None:
            need(self.drone_altitude > 0, f"drone_altitude must be > 0, got {self.drone_altitude}")
        need(self.drone_altitude_factor > 1.0,
             f"drone_altitude_factor must be > 1 (fly above the tallest building), got {self.drone_altitude_factor}")
        for name in ("drone_line_spacing", "drone_step"):
            v = getattr(self, name)
            need(v is None or v > 0, f"{name} must be > 0 m, got {v}")
        need(self.drone_margin is None or self.drone_margin >= 0, f"drone_margin must be >= 0, got {self.drone_margin}")
        need(0 < self.drone_pitch_min <= self.drone_pitch_max < 90,
             f"need 0 < drone_pitch_min <= drone_pitch_max < 90 (degrees below horizon), "
             f"got {self.drone_pitch_min}, {self.drone_pitch_max}")
        need(self.street_paths in ("all", "interior", "none"),
             f"street_paths must be all|interior|none, got {self.street_paths!r}")
        need(self.street_step > 0, f"street_step must be > 0 m, got {self.street_step}")
        need(len(self.street_headings) >= 1, "street_headings needs at least one heading")
        need(0.3 <= self.street_height < self.street_width * 10, f"street_height out of range: {self.street_height}")
        need(self.drone or self.street_paths != "none", "no cameras: enable the drone or some street paths")
        need(self.num_points >= 0, f"num_points must be >= 0, got {self.num_points}")

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["street_headings"] = [float(h) for h in self.street_headings]
        return d


# --------------------------------------------------------------------------- noise
def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice hash -> float in [0, 1).  Integer-only (uint32 wraps) so it is bit-exact."""
    h = (ix.astype(np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)
         + iy.astype(np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)
         + np.uint32((salt * 0xC2B2AE3D) & 0xFFFFFFFF))
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def _vnoise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1]."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    ix = x0.astype(np.int64)
    iy = y0.astype(np.int64)
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    a = _hash01(ix, iy, salt)
    b = _hash01(ix + 1, iy, salt)
    c = _hash01(ix, iy + 1, salt)
    d = _hash01(ix + 1, iy + 1, salt)
    return (a + (b - a) * sx) * (1.0 - sy) + (c + (d - c) * sx) * sy


def _fbm(x: np.ndarray, y: np.ndarray, salt: int, freq: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise, roughly in [0, 1], centred on 0.5."""
    acc = np.zeros_like(x, dtype=np.float64)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        acc += amp * _vnoise(x * freq, y * freq, salt + 101 * o)
        norm += amp
        amp *= 0.5
        freq *= 2.03  # non-integer ratio hides lattice alignment
    return acc / norm


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


# --------------------------------------------------------------------------- city model
@dataclass
class City:
    """Layout + per-building parameters.  Everything the renderer needs."""

    seed: int
    options: CityOptions
    style_name: str
    style: Dict[str, Any]
    x0: float  # city min corner (perimeter street outer edge)
    y0: float
    width: float  # extent along x
    depth: float  # extent along y
    pitch: float  # block_size + street_width
    ground_bounds: Tuple[float, float, float, float]  # xmin, xmax, ymin, ymax of the ground quad
    bmin: np.ndarray  # (M, 3) building box min corners
    bmax: np.ndarray  # (M, 3)
    block_of: np.ndarray  # (M, 2) block index (i, j)
    wall: np.ndarray  # (M, 3)
    glass: np.ndarray
    roof: np.ndarray
    floor_h: np.ndarray  # (M,)
    gfloor_h: np.ndarray
    win_spacing: np.ndarray
    win_w: np.ndarray
    win_h: np.ndarray
    shop: np.ndarray  # (M,) bool
    bsalt: np.ndarray  # (M,) int
    yard: np.ndarray  # (blocks_x, blocks_y) index into _YARD_TYPES
    cell_boxes: np.ndarray  # (blocks_x, blocks_y, K) box indices, -1 padded
    sun: np.ndarray  # (3,) unit vector towards the sun
    salt: int
    sphere_c: np.ndarray = field(init=False)
    sphere_r: np.ndarray = field(init=False)
    cell_boxes_f32: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sphere_c = 0.5 * (self.bmin + self.bmax)
        self.sphere_r = 0.5 * np.linalg.norm(self.bmax - self.bmin, axis=1)
        # Per block cell: (K, 5) footprints + top for the shadow test, plus one extra
        # all-padding cell; padding boxes have top z = -1 so they never block.
        nbx, nby, K = self.cell_boxes.shape
        cb = np.zeros((nbx * nby + 1, K, 5), dtype=np.float32)
        cb[..., 4] = -1.0
        ids = self.cell_boxes.reshape(-1, K)
        valid = ids >= 0
        rows = np.concatenate([self.bmin[:, :2], self.bmax[:, :2], self.bmax[:, 2:3]], 1)
        cb[:-1][valid] = rows[ids[valid]]
        self.cell_boxes_f32 = cb

    @property
    def max_height(self) -> float:
        return float(self.bmax[:, 2].max()) if len(self.bmax) else 0.0

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        return (self.x0, self.x0 + self.width, self.y0, self.y0 + self.depth)


def _resolve_style(opts: CityOptions, rng: np.random.Generator) -> Tuple[str, Dict[str, Any]]:
    name = opts.style
    if name == "random":  # lets a meta-learning sampler vary the style with the seed alone
        name = sorted(STYLES)[int(rng.integers(len(STYLES)))]
    style = dict(STYLES[name])
    lo, hi = style["heights"]
    if opts.min_height is not None:
        lo = opts.min_height
    if opts.max_height is not None:
        hi = opts.max_height
    if lo > hi:
        raise ValueError(f"min_height ({lo}) exceeds max_height ({hi}) for style {name!r}")
    style["heights"] = (float(lo), float(hi))
    return name, style


def _split(rng: np.random.Generator, n: int, length: float) -> np.ndarray:
    w = rng.uniform(0.7, 1.3, n)
    return np.concatenate([[0.0], np.cumsum(w) / w.sum()]) * length


def build_city(seed: int, opts: CityOptions) -> City:
    """Sample the layout and building parameters for ``seed`` (no rendering)."""
    opts.validate()
    ss = np.random.SeedSequence(int(seed))
    # Independent streams so that e.g. camera options never change the layout.
    rng_layout, _rng_cam, rng_tex, _rng_pts = (np.random.default_rng(s) for s in ss.spawn(4))
    style_name, st = _resolve_style(opts, rng_layout)

    B, S, sw = float(opts.block_size), float(opts.street_width), float(opts.sidewalk_width)
    P = B + S
    nbx, nby = int(opts.blocks_x), int(opts.blocks_y)
    width, depth = nbx * P + S, nby * P + S
    x0, y0 = -width / 2.0, -depth / 2.0
    hlo, hhi = st["heights"]

    boxes: List[Tuple[float, ...]] = []
    params: List[Dict[str, Any]] = []
    block_of: List[Tuple[int, int]] = []
    yard = np.zeros((nbx, nby), dtype=np.int64)
    yard_names = list(st["yards"])
    yard_p = np.array([st["yards"][k] for k in yard_names], dtype=np.float64)
    yard_p /= yard_p.sum()

    def new_params() -> Dict[str, Any]:
        fh = rng_layout.uniform(*st["floor_h"])
        jitter = rng_layout.uniform(-0.04, 0.04, 3)
        return dict(
            wall=np.clip(np.array(st["walls"][rng_layout.integers(len(st["walls"]))]) + jitter, 0, 1),
            glass=np.array(st["glass"][rng_layout.integers(len(st["glass"]))]),
            roof=np.clip(np.array(st["roofs"][rng_layout.integers(len(st["roofs"]))])
                         + rng_layout.uniform(-0.03, 0.03, 3), 0, 1),
            floor_h=fh,
            gfloor_h=fh * rng_layout.uniform(1.1, 1.4),
            win_spacing=rng_layout.uniform(*st["win_spacing"]),
            win_w=rng_layout.uniform(*st["win_w"]),
            win_h=rng_layout.uniform(*st["win_h"]),
            shop=bool(rng_layout.random() < st["shop_prob"]),
            salt=int(rng_layout.integers(1, 2**31 - 1)),
        )

    def height() -> float:
        return float(hlo + (hhi - hlo) * rng_layout.random() ** st["height_skew"])

    for i in range(nbx):
        for j in range(nby):
            yard[i, j] = _YARD_TYPES.index(yard_names[rng_layout.choice(len(yard_names), p=yard_p)])
            bx0 = x0 + S + i * P + sw  # buildable area inside the sidewalks
            by0 = y0 + S + j * P + sw
            inner = B - 2 * sw
            nx = int(rng_layout.integers(st["lots"][0], st["lots"][1] + 1))
            ny = int(rng_layout.integers(st["lots"][0], st["lots"][1] + 1))
            ex, ey = _split(rng_layout, nx, inner), _split(rng_layout, ny, inner)
            n_before = len(boxes)
            lots = [(a, b) for a in range(nx) for b in range(ny)]
            empty = rng_layout.random(len(lots)) < st["empty_prob"]
            if empty.all():  # every block keeps at least one building
                empty[int(rng_layout.integers(len(lots)))] = False
            for (a, b), is_empty in zip(lots, empty):
                if is_empty:
                    continue
                lx0, lx1 = bx0 + ex[a], bx0 + ex[a + 1]
                ly0, ly1 = by0 + ey[b], by0 + ey[b + 1]
                sb = rng_layout.uniform(*st["setback"], 4)
                # Never shrink a footprint below 4 m so facades keep some windows.
                sx = min(sb[0] + sb[1], max(0.0, (lx1 - lx0) - 4.0))
                sy = min(sb[2] + sb[3], max(0.0, (ly1 - ly0) - 4.0))
                fx0 = lx0 + sx * sb[0] / max(sb[0] + sb[1], 1e-9)
                fy0 = ly0 + sy * sb[2] / max(sb[2] + sb[3], 1e-9)
                fx1, fy1 = lx1 - (sx - (fx0 - lx0)), ly1 - (sy - (fy0 - ly0))
                h = height()
                boxes.append((fx0, fy0, 0.0, fx1, fy1, h))
                params.append(new_params())
                block_of.append((i, j))
                if rng_layout.random() < st["tower_prob"] and min(fx1 - fx0, fy1 - fy0) > 12.0:
                    # Tower on a podium: a taller, narrower box inside the footprint.
                    tw = rng_layout.uniform(0.4, 0.7) * (fx1 - fx0)
                    td = rng_layout.uniform(0.4, 0.7) * (fy1 - fy0)
                    tx0 = rng_layout.uniform(fx0 + 1.0, fx1 - 1.0 - tw)
                    ty0 = rng_layout.uniform(fy0 + 1.0, fy1 - 1.0 - td)
                    boxes[-1] = (fx0, fy0, 0.0, fx1, fy1, min(h, hlo + 0.3 * (hhi - hlo)))
                    boxes.append((tx0, ty0, 0.0, tx0 + tw, ty0 + td, max(h, hlo + 0.7 * (hhi - hlo))))
                    params.append(new_params())
                    block_of.append((i, j))
            assert len(boxes) > n_before

    arr = np.array(boxes, dtype=np.float64)
    bmin, bmax = arr[:, :3].copy(), arr[:, 3:].copy()
    block_arr = np.array(block_of, dtype=np.int64)
    counts = np.zeros((nbx, nby), dtype=np.int64)
    np.add.at(counts, (block_arr[:, 0], block_arr[:, 1]), 1)
    cell_boxes = -np.ones((nbx, nby, int(counts.max())), dtype=np.int64)
    fill = np.zeros((nbx, nby), dtype=np.int64)
    for m, (i, j) in enumerate(block_arr):
        cell_boxes[i, j, fill[i, j]] = m
        fill[i, j] += 1

    az, el = np.radians(st["sun"][0]), np.radians(st["sun"][1])
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    g = float(opts.ground_margin)

    def col(key: str) -> np.ndarray:
        return np.array([p[key] for p in params])

    return City(
        seed=int(seed), options=opts, style_name=style_name, style=st,
        x0=x0, y0=y0, width=width, depth=depth, pitch=P,
        ground_bounds=(x0 - g, x0 + width + g, y0 - g, y0 + depth + g),
        bmin=bmin, bmax=bmax, block_of=block_arr,
        wall=col("wall"), glass=col("glass"), roof=col("roof"),
        floor_h=col("floor_h"), gfloor_h=col("gfloor_h"), win_spacing=col("win_spacing"),
        win_w=col("win_w"), win_h=col("win_h"), shop=col("shop").astype(bool), bsalt=col("salt"),
        yard=yard, cell_boxes=cell_boxes, sun=sun, salt=int(rng_tex.integers(1, 2**31 - 1)),
    )


# --------------------------------------------------------------------------- cameras
@dataclass
class Frame:
    kind: str  # "drone" | "street"
    path_id: int  # flight line index / street path index
    position: np.ndarray  # (3,)
    yaw_deg: float  # heading, degrees from +x towards +y
    pitch_deg: float  # elevation of the optical axis, degrees (negative = looking down)
    c2w: np.ndarray  # (4, 4) OpenGL camera-to-world


def look_c2w(position: Sequence[float], yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Camera-to-world (OpenGL: x right, y up, looks along -z) from heading/elevation."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])  # fwd x z_up, normalised (no roll)
    up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, position
    # Rounded once here and used for both rendering and transforms.json, so the
    # images agree exactly with the poses written to disk.
    return np.round(c2w, 9)


def drone_altitude(city: City) -> float:
    o = city.options
    if o.drone_altitude is not None:
        return float(o.drone_altitude)
    return max(20.0, o.drone_altitude_factor * city.max_height)


def make_cameras(city: City) -> List[Frame]:
    """Drone lawnmower frames then street-path frames, in capture order."""
    o = city.options
    rng = np.random.default_rng(np.random.SeedSequence(city.seed).spawn(4)[1])
    frames: List[Frame] = []
    xmin, xmax, ymin, ymax = city.bounds
    if o.drone:
        A = drone_altitude(city)
        spacing = o.drone_line_spacing if o.drone_line_spacing is not None else 0.6 * A
        step = o.drone_step if o.drone_step is not None else 0.25 * A
        margin = o.drone_margin if o.drone_margin is not None else 0.3 * A
        lo = np.array([xmin - margin, ymin - margin])
        hi = np.array([xmax + margin, ymax + margin])
        along_axis = 0 if (hi[0] - lo[0]) >= (hi[1] - lo[1]) else 1  # fly along the long side
        across_axis = 1 - along_axis
        n_lines = max(2, int(round((hi[across_axis] - lo[across_axis]) / spacing)) + 1)
        n_per = max(2, int(round((hi[along_axis] - lo[along_axis]) / step)) + 1)
        across = np.linspace(lo[across_axis], hi[across_axis], n_lines)
        along = np.linspace(lo[along_axis], hi[along_axis], n_per)
        base_yaw = 0.0 if along_axis == 0 else 90.0
        # Every other frame is turned 90 deg left/right of the flight line; with the
        # alternating line direction every spot is seen heading +x, -x, +y and -y.
        offsets = [0.0, 90.0, 0.0, -90.0] if o.drone_rotate else [0.0]
        for li, a in enumerate(across):
            seq = along if li % 2 == 0 else along[::-1]
            heading = base_yaw if li % 2 == 0 else base_yaw + 180.0
            for k, s in enumerate(seq):
                pos = np.zeros(3)
                pos[along_axis], pos[across_axis] = s, a
                pos[2] = A * (1.0 + rng.uniform(-0.03, 0.03))
                yaw = heading + offsets[k % len(offsets)] + rng.uniform(-8.0, 8.0)
                pitch = -rng.uniform(o.drone_pitch_min, o.drone_pitch_max)
                # Near the edge of the flight area a view would stare at the empty
                # countryside: turn it (180, then +-90 deg) so its ground target is in the city.
                reach = pos[2] / math.tan(math.radians(-pitch))
                best = None
                for turn in (0.0, 180.0, 90.0, -90.0):
                    tgt = pos[:2] + reach * np.array([math.cos(math.radians(yaw + turn)),
                                                      math.sin(math.radians(yaw + turn))])
                    out_dist = max(xmin - tgt[0], tgt[0] - xmax, ymin - tgt[1], tgt[1] - ymax)
                    if best is None or out_dist < best[0] - 1e-9:
                        best = (out_dist, turn)
                    if out_dist <= o.street_width:
                        best = (out_dist, turn)
                        break
                yaw = (yaw + best[1] + 180.0) % 360.0 - 180.0
                frames.append(Frame("drone", li, pos, float(yaw), float(pitch), look_c2w(pos, yaw, pitch)))

    if o.street_paths != "none":
        S, P = o.street_width, city.pitch
        nbx, nby = o.blocks_x, o.blocks_y
        paths = []  # (start xy, unit dir, length, outward normal or None)
        for j in range(nby + 1):  # streets running along x, ordered by y
            yc = ymin + S / 2 + j * P
            outward = np.array([0.0, -1.0]) if j == 0 else (np.array([0.0, 1.0]) if j == nby else None)
            paths.append((np.array([xmin + S / 2, yc]), np.array([1.0, 0.0]), xmax - xmin - S, outward))
        for i in range(nbx + 1):  # streets running along y, ordered by x
            xc = xmin + S / 2 + i * P
            outward = np.array([-1.0, 0.0]) if i == 0 else (np.array([1.0, 0.0]) if i == nbx else None)
            paths.append((np.array([xc, ymin + S / 2]), np.array([0.0, 1.0]), ymax - ymin - S, outward))
        if o.street_paths == "interior" and any(p[3] is None for p in paths):
            paths = [p for p in paths if p[3] is None]
        for pid, (start, u, length, outward) in enumerate(paths):
            if pid % 2 == 1:  # snake so consecutive paths start near where the last ended
                start, u = start + u * length, -u
            right = np.array([u[1], -u[0]])
            travel_yaw = math.degrees(math.atan2(u[1], u[0]))
            n_stops = max(1, int(math.floor(length / o.street_step)))
            offs = (np.arange(n_stops) + 0.5) * (length / n_stops)  # stops centred in their interval
            for s in offs:
                for h in o.street_headings:
                    hn = (h + 180.0) % 360.0 - 180.0
                    ahead = length - s if abs(hn) <= 45.0 else (s if abs(hn) >= 135.0 else length)
                    if ahead < length / 3.0:
                        h = h + 180.0  # near a street's end look back down it, not out of town
                    yaw = travel_yaw + h + rng.uniform(-4.0, 4.0)
                    d = np.array([math.cos(math.radians(yaw)), math.sin(math.radians(yaw))])
                    if outward is not None and float(d @ outward) > 0.5:
                        continue  # on perimeter streets don't stare at the empty countryside
                    hn = (h + 180.0) % 360.0 - 180.0
                    side = 45.0 < abs(hn) < 135.0
                    pitch = (o.street_pitch_side if side else o.street_pitch_forward) + rng.uniform(-2.0, 2.0)
                    # Along-street views keep to the right lane; a side view stands on the
                    # far side of the street from the facade it looks at, so it sees more of it.
                    lateral = math.copysign(1.0, hn) if side else 1.0
                    xy = start + u * s + right * (lateral * S / 4.0) + rng.uniform(-0.3, 0.3, 2)
                    pos = np.array([xy[0], xy[1], o.street_height + rng.uniform(-0.1, 0.1)])
                    yaw = (yaw + 180.0) % 360.0 - 180.0
                    frames.append(Frame("street", pid, pos, float(yaw), float(pitch), look_c2w(pos, yaw, pitch)))
    return frames


def intrinsics(opts: CityOptions) -> Tuple[float, float, float, float]:
    fx = (opts.image_width / 2.0) / math.tan(math.radians(opts.fov_deg) / 2.0)
    return fx, fx, opts.image_width / 2.0, opts.image_height / 2.0


def camera_rays(c2w: np.ndarray, opts: CityOptions, ss: int = 1) -> np.ndarray:
    """Unit world ray directions (H*ss, W*ss, 3), sub-pixel centres; ss=1 -> pixel centres."""
    fx, fy, cx, cy = intrinsics(opts)
    W, H = opts.image_width, opts.image_height
    u = (np.arange(W * ss) + 0.5) / ss
    v = (np.arange(H * ss) + 0.5) / ss
    uu, vv = np.meshgrid(u, v)
    d = np.stack([(uu - cx) / fx, -(vv - cy) / fy, -np.ones_like(uu)], -1)
    d = d @ c2w[:3, :3].T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- ray casting
def intersect(city: City, origin: np.ndarray, dirs: np.ndarray, tile: int = 16) -> Dict[str, np.ndarray]:
    """Nearest hit of rays sharing ``origin`` with ground quad and building boxes.

    ``dirs`` is (H, W, 3) (unit).  Rays are grouped in ``tile`` x ``tile`` tiles; a
    cone around each tile culls boxes by bounding sphere so large cities stay fast.
    Returns dict of (H, W) arrays: t (inf = miss), kind (0 sky, 1 ground, 2 box),
    box (index or -1), axis (0/1/2 of the hit box face).
    """
    H, W, _ = dirs.shape
    o = np.asarray(origin, dtype=np.float64)
    d = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)  # avoid 0 * inf in the slab test
    Ht, Wt = -(-H // tile), -(-W // tile)
    dp = np.pad(d, ((0, Ht * tile - H), (0, Wt * tile - W), (0, 0)), mode="edge")
    td = dp.reshape(Ht, tile, Wt, tile, 3).transpose(0, 2, 1, 3, 4).reshape(Ht * Wt, tile * tile, 3)
    T, R = td.shape[:2]

    t_box = np.full((T, R), np.inf)
    box_id = np.full((T, R), -1, dtype=np.int64)
    axis = np.zeros((T, R), dtype=np.int64)
    M = len(city.bmin)
    if M:
        ax = td.sum(1)
        ax /= np.linalg.norm(ax, axis=-1, keepdims=True)
        cos_a = np.clip(np.einsum("trk,tk->tr", td, ax).min(1), -1.0, 1.0)
        alpha = np.arccos(cos_a)  # (T,) cone half-angle
        v = city.sphere_c - o
        dist = np.linalg.norm(v, axis=-1)
        beta = np.arcsin(np.clip(city.sphere_r / np.maximum(dist, 1e-9), 0.0, 1.0))
        theta = np.arccos(np.clip((v @ ax.T).T / np.maximum(dist, 1e-9), -1.0, 1.0))  # (T, M)
        cand = (dist <= city.sphere_r)[None, :] | (theta <= alpha[:, None] + beta[None, :] + 1e-6)
        K = int(cand.sum(1).max())
        if K:
            order = np.argsort(~cand, axis=1, kind="stable")[:, :K]
            valid = np.take_along_axis(cand, order, 1)
            # float32 + one axis at a time: small trailing-axis reductions are slow in numpy.
            inv_all = (1.0 / td).astype(np.float32)
            lo_all = (city.bmin[order] - o).astype(np.float32)  # (T, K, 3)
            hi_all = (city.bmax[order] - o).astype(np.float32)
            chunk = max(1, int(4_000_000 // (R * K)))  # bound temporaries to ~16 MB each
            for s in range(0, T, chunk):
                e = min(T, s + chunk)
                tnear = tfar = None
                for a in range(3):
                    inv = inv_all[s:e, :, None, a]
                    t1 = lo_all[s:e, None, :, a] * inv
                    t2 = hi_all[s:e, None, :, a] * inv
                    tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
                    if tnear is None:
                        tnear, tfar = tn, tf
                    else:
                        np.maximum(tnear, tn, out=tnear)
                        np.minimum(tfar, tf, out=tfar)
                hit = valid[s:e, None, :] & (tnear <= tfar) & (tnear > 1e-6)
                tn = np.where(hit, tnear, np.inf)
                k = tn.argmin(-1)
                box_id[s:e] = np.where(np.isfinite(np.take_along_axis(tn, k[..., None], -1)[..., 0]),
                                       np.take_along_axis(order[s:e], k, 1), -1)
            # Exact float64 distance and hit face for the chosen box only.
            hitm = box_id >= 0
            bid = np.where(hitm, box_id, 0)
            inv64 = 1.0 / td
            t1 = (city.bmin[bid] - o) * inv64
            t2 = (city.bmax[bid] - o) * inv64
            tmin = np.minimum(t1, t2)
            axis = tmin.argmax(-1)
            t_box = np.where(hitm, np.take_along_axis(tmin, axis[..., None], -1)[..., 0], np.inf)

    # Ground quad z = 0 within the ground bounds.
    gx0, gx1, gy0, gy1 = city.ground_bounds
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(td[..., 2] < -1e-12, -o[2] / td[..., 2], np.inf)
    px, py = o[0] + tg * td[..., 0], o[1] + tg * td[..., 1]
    tg = np.where((tg > 0) & (px >= gx0) & (px <= gx1) & (py >= gy0) & (py <= gy1), tg, np.inf)

    kind = np.where(t_box < tg, 2, np.where(np.isfinite(tg), 1, 0))
    t = np.minimum(t_box, tg)
    box_id = np.where(kind == 2, box_id, -1)

    def untile(a: np.ndarray) -> np.ndarray:
        a = a.reshape(Ht, Wt, tile, tile).transpose(0, 2, 1, 3).reshape(Ht * tile, Wt * tile)
        return a[:H, :W]

    return dict(t=untile(t), kind=untile(kind), box=untile(box_id), axis=untile(axis))


def _in_shadow(city: City, p: np.ndarray) -> np.ndarray:
    """True where the segment from point p towards the sun is blocked by a building.

    The sun is directional, so only boxes in the few block cells that the shadow
    ray's horizontal footprint crosses can block it; each box is a vertical prism
    standing on the ground, so a 2D slab test clipped at the box top is exact.
    """
    n = len(p)
    if n == 0 or len(city.bmin) == 0:
        return np.zeros(n, dtype=bool)
    s = city.sun
    zmax = city.max_height
    sh = max(math.hypot(s[0], s[1]), 1e-12)
    reach = np.maximum(0.0, zmax - p[:, 2]) / s[2] * sh  # horizontal length of the useful ray
    ex, ey = p[:, 0] + reach * s[0] / sh, p[:, 1] + reach * s[1] / sh
    P = city.pitch
    nbx, nby, K = city.cell_boxes.shape
    cx_lo = np.floor((np.minimum(p[:, 0], ex) - city.x0) / P).astype(np.int64)
    cx_hi = np.floor((np.maximum(p[:, 0], ex) - city.x0) / P).astype(np.int64)
    cy_lo = np.floor((np.minimum(p[:, 1], ey) - city.y0) / P).astype(np.int64)
    cy_hi = np.floor((np.maximum(p[:, 1], ey) - city.y0) / P).astype(np.int64)
    nspan = int(math.floor(zmax / s[2] * sh / P)) + 2
    pf = p.astype(np.float32)
    sx = np.float32(s[0] if abs(s[0]) > 1e-9 else 1e-9)
    sy = np.float32(s[1] if abs(s[1]) > 1e-9 else 1e-9)
    sz = np.float32(s[2])
    out = np.zeros(n, dtype=bool)
    for dx in range(nspan):
        for dy in range(nspan):
            ci, cj = cx_lo + dx, cy_lo + dy
            ok = (ci <= cx_hi) & (cj <= cy_hi) & (ci >= 0) & (ci < nbx) & (cj >= 0) & (cj < nby) & ~out
            if dx or dy:  # most segments stay in one cell: only test the few that cross
                sel = np.nonzero(ok)[0]
                if not len(sel):
                    continue
                cb = city.cell_boxes_f32[ci[sel] * nby + cj[sel]]  # (m, K, 5)
                q = pf[sel]
            else:
                sel = slice(None)
                cb = city.cell_boxes_f32[np.where(ok, np.clip(ci, 0, nbx - 1) * nby + np.clip(cj, 0, nby - 1),
                                                  nbx * nby)]
                q = pf
            px, py, pz = q[:, 0:1], q[:, 1:2], q[:, 2:3]
            tx1, tx2 = (cb[..., 0] - px) / sx, (cb[..., 2] - px) / sx
            ty1, ty2 = (cb[..., 1] - py) / sy, (cb[..., 3] - py) / sy
            tnear = np.maximum(np.maximum(np.minimum(tx1, tx2), np.minimum(ty1, ty2)), np.float32(0.0))
            tfar = np.minimum(np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2)), (cb[..., 4] - pz) / sz)
            out[sel] |= (tnear <= tfar).any(-1)
    return out


# --------------------------------------------------------------------------- textures
def _sky(city: City, d: np.ndarray) -> np.ndarray:
    st = city.style
    zen, hor = np.array(st["zenith"]), np.array(st["horizon"])
    e = d[:, 2]
    t = np.clip(e, 0.0, 1.0) ** 0.55
    col = hor + (zen - hor) * t[:, None]
    # Below the horizon (beyond the ground quad): distant hazy land.
    haze = hor * 0.85 + np.array([-0.08, -0.02, -0.10])
    col = np.where((e < 0)[:, None], _mix(hor, haze, np.clip(-e * 6.0, 0, 1)[:, None]), col)
    c = d @ city.sun
    col = col + 0.35 * np.exp((c - 1.0) * 60.0)[:, None] * np.array([1.0, 0.95, 0.8])
    col = np.where((c > math.cos(math.radians(1.8)))[:, None], np.array([1.0, 0.98, 0.92]), col)
    return col


def _ground(city: City, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ground albedo as a function of world (x, y): streets, sidewalks, yards, fields."""
    o, st, salt = city.options, city.style, city.salt
    B, S, sw, P = o.block_size, o.street_width, o.sidewalk_width, city.pitch
    n = len(x)
    col = np.zeros((n, 3))
    px, py = x - city.x0, y - city.y0
    ci, cj = np.floor(px / P), np.floor(py / P)
    rx, ry = px - ci * P, py - cj * P
    in_city = (px >= 0) & (px < city.width) & (py >= 0) & (py < city.depth)
    sx, sy = rx < S, ry < S  # inside a street strip running along y / along x
    bx, by = rx - S, ry - S

    # Fine grain shared by every paved surface (multi-view features at all scales).
    grain = _vnoise(x * 3.1, y * 3.1, salt + 7) - 0.5
    blotch = _fbm(x, y, salt + 11, 0.08, 3) - 0.5

    # Countryside: patchwork of fields with crop rows.
    m = ~in_city
    if m.any():
        fxy = np.floor(x[m] / 31.0), np.floor(y[m] / 23.0)
        h = _hash01(fxy[0].astype(np.int64), fxy[1].astype(np.int64), salt + 13)
        fc = np.array(st["field_colors"])[(h * len(st["field_colors"])).astype(np.int64)]
        ang = h * 2 * np.pi * 7.0
        rows = 0.5 + 0.5 * np.sin((x[m] * np.cos(ang) + y[m] * np.sin(ang)) * 2.2)
        shade = 0.85 + 0.15 * rows + 0.35 * blotch[m] + 0.12 * grain[m]
        col[m] = fc * shade[:, None]

    asph = st["asphalt"] * (1.0 + 0.25 * blotch + 0.22 * grain)
    white = np.array([0.90, 0.90, 0.88])
    # Streets and intersections.
    m = in_city & (sx | sy)
    if m.any():
        c = np.repeat(asph[m, None], 3, 1)
        rxm, rym, bxm, bym = rx[m], ry[m], bx[m], by[m]
        along_y = sx[m] & ~sy[m]
        along_x = sy[m] & ~sx[m]
        for sel, r_across, b_along, pos in ((along_y, rxm, bym, y[m]), (along_x, rym, bxm, x[m])):
            near_end = (b_along < 4.0) | (b_along > B - 4.0)
            centre = (np.abs(r_across - S / 2) < 0.13) & (_frac(pos / 6.0) < 0.5) & ~near_end
            edge = ((np.abs(r_across - 1.0) < 0.1) | (np.abs(r_across - (S - 1.0)) < 0.1)) & ~near_end
            zebra = (((b_along > 0.8) & (b_along < 3.4)) | ((b_along < B - 0.8) & (b_along > B - 3.4))) \
                & (_frac(r_across / 1.1) < 0.5) & (r_across > 1.0) & (r_across < S - 1.0)
            c[sel & centre] = st["centre_line"]
            c[sel & (edge | zebra)] = white
        # Manhole covers in intersections: small dark discs on a lattice.
        inter = sx[m] & sy[m]
        mh = inter & (np.hypot(rxm - S * 0.3, rym - S * 0.65) < 0.45)
        c[mh] = 0.18
        col[m] = c * (1.0 + 0.1 * grain[m, None])

    # Blocks: sidewalks, yards.
    m = in_city & ~sx & ~sy
    if m.any():
        bxm, bym = bx[m], by[m]
        edge_d = np.minimum(np.minimum(bxm, B - bxm), np.minimum(bym, B - bym))
        side = edge_d < sw
        c = np.zeros((int(m.sum()), 3))
        if side.any():
            xs, ys = x[m][side], y[m][side]
            tile = _hash01(np.floor(xs / 1.5).astype(np.int64), np.floor(ys / 1.5).astype(np.int64), salt + 17)
            joint = (_frac(xs / 1.5) < 0.06) | (_frac(ys / 1.5) < 0.06)
            v = 0.66 + 0.06 * (tile - 0.5) + 0.15 * blotch[m][side] + 0.1 * grain[m][side] - 0.15 * joint
            v = np.where(edge_d[side] < 0.3, 0.80, v)  # kerb
            c[side] = v[:, None] * np.array([1.0, 0.99, 0.96])
        yard_t = city.yard[ci[m].astype(np.int64).clip(0, o.blocks_x - 1), cj[m].astype(np.int64).clip(0, o.blocks_y - 1)]
        for yi, name in enumerate(_YARD_TYPES):
            sel = ~side & (yard_t == yi)
            if not sel.any():
                continue
            xs, ys = x[m][sel], y[m][sel]
            g, b = grain[m][sel], blotch[m][sel]
            if name == "grass":
                dark = _fbm(xs, ys, salt + 19, 0.25, 2) > 0.62  # shrubs / tree clumps
                v = 0.9 + 0.6 * b + 0.3 * g
                c[sel] = np.where(dark[:, None], np.array([0.12, 0.26, 0.10]) * (0.9 + 0.4 * g[:, None]),
                                  np.array([0.30, 0.48, 0.19]) * v[:, None])
            elif name == "plaza":
                ix, iy = np.floor(xs / 2.0).astype(np.int64), np.floor(ys / 2.0).astype(np.int64)
                h = _hash01(ix, iy, salt + 23)
                stone = np.where((h > 0.5)[:, None], np.array([0.78, 0.70, 0.58]), np.array([0.66, 0.56, 0.48]))
                joint = (_frac(xs / 2.0) < 0.05) | (_frac(ys / 2.0) < 0.05)
                v = (0.9 + 0.15 * h + 0.3 * b + 0.15 * g) * np.where(joint, 0.75, 1.0)
                c[sel] = stone * v[:, None]
            else:  # parking
                v = st["asphalt"] * (1.05 + 0.3 * b + 0.25 * g)
                lx = _frac(xs / 2.6) < 0.06
                row = _frac(ys / 12.0)
                lines = lx & (row > 0.1) & (row < 0.45) | (np.abs(row - 0.5) < 0.01)
                c[sel] = np.where(lines[:, None], white, v[:, None])
        col[m] = c
    return np.clip(col, 0.0, 1.0)


def _facade(city: City, bid: np.ndarray, u: np.ndarray, z: np.ndarray, width: np.ndarray,
            face: np.ndarray) -> np.ndarray:
    """Wall albedo at facade coordinate u (metres along the face) and height z."""
    salt = city.salt + city.bsalt[bid] + 31 * face
    top = city.bmax[bid, 2]
    fh, g = city.floor_h[bid], city.gfloor_h[bid]
    wall, glass = city.wall[bid], city.glass[bid]
    ncol = np.maximum(1, np.floor(width / city.win_spacing[bid]))
    sp = width / ncol
    cu = u / sp
    colf = np.floor(cu)
    fu = cu - colf
    zz = (z - g) / fh
    rowf = np.floor(zz)
    fv = zz - rowf
    upper = (z >= g) & (z < top - 0.9)
    ww, wh = city.win_w[bid], city.win_h[bid]
    win = upper & (np.abs(fu - 0.5) < ww / 2) & (np.abs(fv - 0.52) < wh / 2)
    frame = upper & (np.abs(fu - 0.5) < ww / 2 + 0.05) & (np.abs(fv - 0.52) < wh / 2 + 0.05) & ~win
    slab = upper & (fv < 0.07)
    # Ground floor: shop windows or a plinth with a door now and then.
    shop = city.shop[bid]
    gwin = (z < g) & (z > 0.5) & (z < g - 0.6) & np.where(shop, np.abs(fu - 0.5) < 0.42,
                                                          (np.abs(fu - 0.5) < ww / 2) & (z > 1.0))
    plinth = (z < 0.5)
    cornice = z >= top - 0.9

    wn = _fbm(u, z, int(salt[0]) if salt.size else 0, 0.35, 2)
    grain = _vnoise(u * 2.7, z * 2.7, city.salt + 41) - 0.5
    c = wall * (0.82 + 0.3 * wn + 0.12 * grain)[:, None]
    c = np.where(slab[:, None], c * 0.8, c)
    c = np.where(cornice[:, None], c * 0.72 + 0.05, c)
    c = np.where(plinth[:, None], c * 0.6, c)
    hw = _hash01(colf.astype(np.int64) + 977 * face, rowf.astype(np.int64), city.salt + 53)
    hb = _hash01(city.bsalt[bid].astype(np.int64), face.astype(np.int64), city.salt + 59)
    wc = glass * (0.75 + 0.6 * hw)[:, None] + 0.08 * hb[:, None]
    wc = np.where((hw > 0.93)[:, None], np.array([0.85, 0.78, 0.55]), wc)  # curtains / lit rooms
    c = np.where(frame[:, None], 0.85 * np.maximum(wall, 0.7), c)
    c = np.where(win[:, None], wc, c)
    shopc = np.where(shop[:, None], np.array([0.20, 0.26, 0.30]) + 0.25 * hw[:, None], glass * 0.9)
    c = np.where(gwin[:, None], shopc, c)
    return np.clip(c, 0.0, 1.0)


def _roof(city: City, bid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Roof albedo: gravel noise, parapet rim, rooftop units / panels."""
    salt = city.salt + 67
    mn, mx = city.bmin[bid], city.bmax[bid]
    rim = np.minimum(np.minimum(x - mn[:, 0], mx[:, 0] - x), np.minimum(y - mn[:, 1], mx[:, 1] - y)) < 0.5
    v = 0.85 + 0.35 * (_fbm(x, y, salt, 0.3, 2) - 0.5) + 0.2 * (_vnoise(x * 3.3, y * 3.3, salt + 1) - 0.5)
    c = city.roof[bid] * v[:, None]
    ix, iy = np.floor(x / 4.0), np.floor(y / 4.0)
    h = _hash01(ix.astype(np.int64), iy.astype(np.int64), salt + 2)
    fx, fy = _frac(x / 4.0), _frac(y / 4.0)
    unit = (h > 0.82) & (np.abs(fx - 0.5) < 0.3) & (np.abs(fy - 0.5) < 0.25)
    panel = (h < 0.08) & (np.abs(fx - 0.5) < 0.42) & (np.abs(fy - 0.5) < 0.4)
    c = np.where(unit[:, None], np.array([0.62, 0.63, 0.64]) * (0.8 + 0.3 * h[:, None]), c)
    c = np.where(panel[:, None], np.array([0.10, 0.14, 0.26]) + 0.05 * (_frac(x * 1.5) < 0.1)[:, None], c)
    c = np.where(rim[:, None], city.wall[bid] * 0.9, c)
    return np.clip(c, 0.0, 1.0)


def shade_hits(city: City, p: np.ndarray, d: np.ndarray, kind: np.ndarray, box: np.ndarray,
               axis: np.ndarray) -> np.ndarray:
    """Colour of flat arrays of hits (kind 0 = sky).  View-independent except the sky."""
    n = len(d)
    col = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    m = kind == 0
    col[m] = _sky(city, d[m])
    m = kind == 1
    col[m] = _ground(city, p[m, 0], p[m, 1])
    normal[m] = (0.0, 0.0, 1.0)
    m = (kind == 2) & (axis == 2)
    col[m] = _roof(city, box[m], p[m, 0], p[m, 1])
    normal[m] = (0.0, 0.0, 1.0)
    for ax in (0, 1):
        m = (kind == 2) & (axis == ax)
        if not m.any():
            continue
        b = box[m]
        sgn = -np.sign(d[m, ax])  # face normal points back towards the camera
        other = 1 - ax
        u = p[m, other] - city.bmin[b, other]
        width = city.bmax[b, other] - city.bmin[b, other]
        face = (2 * ax + (sgn > 0)).astype(np.int64)
        col[m] = _facade(city, b, u, p[m, 2], width, face)
        normal[m, ax] = sgn
    lit = kind > 0
    ndl = np.clip(normal @ city.sun, 0.0, 1.0)
    if city.options.shadows:
        cand = lit & (ndl > 0)
        sh = np.zeros(n, dtype=bool)
        sh[cand] = _in_shadow(city, p[cand] + normal[cand] * 1e-4)
        ndl = np.where(sh, 0.0, ndl)
    # Facade feet get a little ambient occlusion so building bases read clearly.
    ao = np.where((kind == 2) & (axis < 2), 1.0 - 0.25 * np.exp(-p[:, 2] / 1.5), 1.0)
    light = (0.5 + 0.62 * ndl) * ao
    col = np.where(lit[:, None], col * light[:, None], col)
    return np.clip(col, 0.0, 1.0)


def render_frame(city: City, frame: Frame, want_depth: bool = False, n_points: int = 0,
                 rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
    """Render one frame: uint8 RGB (H, W, 3), optional float32 z-depth, sampled points."""
    o = city.options
    ss = o.supersample
    H, W = o.image_height, o.image_width
    origin = frame.c2w[:3, 3]
    d = camera_rays(frame.c2w, o, ss)
    hit = intersect(city, origin, d)
    df = d.reshape(-1, 3)
    t = hit["t"].reshape(-1)
    kind = hit["kind"].reshape(-1)
    p = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * df
    col = shade_hits(city, p, df, kind, hit["box"].reshape(-1), hit["axis"].reshape(-1))
    img = col.reshape(H, ss, W, ss, 3).mean(axis=(1, 3))  # box filter = anti-aliasing
    out: Dict[str, Any] = dict(rgb=np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))
    if want_depth:
        # Depth at exact pixel centres (not the supersampled average) so it is a
        # well-defined ray quantity: z-depth along the optical axis, 0 for sky.
        dc = camera_rays(frame.c2w, o, 1)
        hc = intersect(city, origin, dc)
        fwd = -frame.c2w[:3, 2]
        z = hc["t"] * (dc @ fwd)
        out["depth"] = np.where(np.isfinite(z), z, 0.0).astype(np.float32)
    if n_points and rng is not None:
        idx = np.nonzero(kind > 0)[0]
        if len(idx):
            pick = np.sort(rng.choice(len(idx), size=min(n_points, len(idx)), replace=False))
            idx = idx[pick]
            out["points"] = p[idx]
            out["colors"] = np.clip(np.round(col[idx] * 255.0), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- coverage
def coverage(city: City, frames: List[Frame]) -> Dict[str, Any]:
    """How well each block is seen, for the summary and city.json.

    Sample points per block: 8 points on its sidewalk ring and one exposed point
    on each roof.  For each point count the frames with an unoccluded in-frame
    view and the distinct 90-degree azimuth sectors of those viewing rays.  A
    point at the foot of a tall wall can only be seen from the street side, so
    per block the minimum views and the median number of sectors are reported.
    """
    o = city.options
    fx, fy, cx, cy = intrinsics(o)
    B, S, sw = o.block_size, o.street_width, o.sidewalk_width
    res: List[Dict[str, Any]] = []
    for i in range(o.blocks_x):
        for j in range(o.blocks_y):
            bx0, by0 = city.x0 + S + i * city.pitch, city.y0 + S + j * city.pitch
            a, b = sw / 2, B - sw / 2
            pts = [(bx0 + u, by0 + v, 0.0) for u in (a, B / 2, b) for v in (a, B / 2, b) if (u, v) != (B / 2, B / 2)]
            for m in np.nonzero((city.block_of[:, 0] == i) & (city.block_of[:, 1] == j))[0]:
                # An exposed roof point: the centre, or a quarter point if a tower covers it.
                mn, mx = city.bmin[m], city.bmax[m]
                for fu, fv in ((0.5, 0.5), (0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8)):
                    q = np.array([mn[0] + fu * (mx[0] - mn[0]), mn[1] + fv * (mx[1] - mn[1]), mx[2]])
                    covered = (np.all(city.bmin[:, :2] < q[:2], 1) & np.all(city.bmax[:, :2] > q[:2], 1)
                               & (city.bmax[:, 2] > q[2] + 1e-6))
                    if not covered.any():
                        pts.append(tuple(q))
                        break
            pts_a = np.array(pts)
            views = np.zeros(len(pts_a), dtype=np.int64)
            sectors = np.zeros((len(pts_a), 4), dtype=bool)
            for f in frames:
                pc = (pts_a - f.c2w[:3, 3]) @ f.c2w[:3, :3]  # world -> camera (rotation part)
                zc = -pc[:, 2]
                with np.errstate(divide="ignore", invalid="ignore"):
                    uu = cx + fx * pc[:, 0] / zc
                    vv = cy - fy * pc[:, 1] / zc
                inside = (zc > 0.1) & (uu >= 0) & (uu < o.image_width) & (vv >= 0) & (vv < o.image_height)
                if not inside.any():
                    continue
                sel = np.nonzero(inside)[0]
                dv = pts_a[sel] - f.c2w[:3, 3]
                dist = np.linalg.norm(dv, axis=1)
                hit = intersect(city, f.c2w[:3, 3], (dv / dist[:, None])[:, None, :], tile=1)
                vis = hit["t"][:, 0] >= dist - 0.05
                sel, dv = sel[vis], dv[vis]
                views[sel] += 1
                az = np.degrees(np.arctan2(dv[:, 1], dv[:, 0]))
                sectors[sel, np.minimum((((az + 45.0) % 360.0) // 90.0).astype(np.int64), 3)] = True
            nsec = sectors.sum(1)
            res.append(dict(block=[i, j], points=len(pts_a), min_views=int(views.min()),
                            mean_views=round(float(views.mean()), 2), min_directions=int(nsec.min()),
                            median_directions=float(np.median(nsec))))
    return dict(method="per block: 8 sidewalk points + an exposed point on each roof; views = unoccluded "
                       "in-frame frames; directions = distinct 90-degree azimuth sectors of the viewing rays",
                blocks=res, min_views=min(r["min_views"] for r in res),
                min_median_directions=min(r["median_directions"] for r in res))


# --------------------------------------------------------------------------- writers
def city_mesh(city: City) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles of the ground quad and every building box (no hidden bottoms).

    Returns vertices (V, 3) float64, faces (F, 3) int, vertex colours (V, 3) uint8."""
    gx0, gx1, gy0, gy1 = city.ground_bounds
    verts = [np.array([[gx0, gy0, 0.0], [gx1, gy0, 0.0], [gx1, gy1, 0.0], [gx0, gy1, 0.0]])]
    faces = [np.array([[0, 1, 2], [0, 2, 3]])]
    cols = [np.full((4, 3), 110)]
    # Box corner k has bits (x, y, z); faces wound counter-clockwise seen from outside.
    quads = np.array([[4, 5, 7, 6],  # top
                      [0, 1, 5, 4],  # -y
                      [2, 6, 7, 3],  # +y
                      [0, 4, 6, 2],  # -x
                      [1, 3, 7, 5]])  # +x
    tri = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    base = 4
    for m in range(len(city.bmin)):
        mn, mx = city.bmin[m], city.bmax[m]
        corners = np.array([[(mx if (k >> a) & 1 else mn)[a] for a in range(3)] for k in range(8)])
        verts.append(corners)
        faces.append(tri + base)
        cols.append(np.tile(np.round(city.wall[m] * 255), (8, 1)))
        base += 8
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(cols).astype(np.uint8)


def _equivalent_command(out: Path, seed: int, opts: CityOptions) -> str:
    """CLI command reproducing ``opts`` (only non-default flags)."""
    args = ["python", "tools/make_city.py", "--seed", str(seed)]
    default = CityOptions()
    for f in dataclasses.fields(CityOptions):
        v, dv = getattr(opts, f.name), getattr(default, f.name)
        if v == dv:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif f.name == "street_headings":
            args += [flag, ",".join(f"{h:g}" for h in v)]
        else:
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    args += ["--out", str(out)]
    return shlex.join(args)


def _readme(city: City, frames: List[Frame], command: str, cov: Optional[Dict[str, Any]]) -> str:
    o = city.options
    n_d = sum(f.kind == "drone" for f in frames)
    cov_line = ""
    if cov is not None:
        cov_line = (f"- coverage: every sample point (block sidewalks, roofs) is seen unoccluded in >= "
                    f"{cov['min_views']} frames;\n  per block the median point is seen from >= "
                    f"{cov['min_median_directions']:g} of 4 azimuth sectors\n")
    depth_line = ("- `gt/depth/frame_XXXXX.npy`: float32 z-depth (metres along the optical axis) at pixel centres, "
                  "0 = sky\n" if o.write_depth else "- no depth maps (regenerate with `--write-depth` for them)\n")
    return f"""# Synthetic city capture (seed {city.seed}, style `{city.style_name}`)

A procedurally generated city rendered by `tools/make_city.py` (numpy ray caster).
Textures, sun shading and shadows depend on the surface point only (nothing is
view-dependent except the sky), so all views are consistent. Made with:

```
{command}
```

Re-running the command reproduces the files byte for byte (same numpy/Pillow/zlib).

## Scene
- {o.blocks_x} x {o.blocks_y} city blocks of {o.block_size:g} m, streets {o.street_width:g} m wide (also around the
  perimeter), {len(city.bmin)} box buildings {city.bmax[:, 2].min():.1f}-{city.max_height:.1f} m tall, countryside
  ground {o.ground_margin:g} m beyond the city, sky/haze beyond that
- world frame: z up, metres, ground z = 0, origin at the city centre; city bounds
  x [{city.bounds[0]:g}, {city.bounds[1]:g}], y [{city.bounds[2]:g}, {city.bounds[3]:g}]

## Cameras
- {len(frames)} images {o.image_width}x{o.image_height}, pinhole, horizontal fov {o.fov_deg:g} deg
- frames 0-{n_d - 1}: drone, boustrophedon flight at ~{drone_altitude(city):.1f} m, oblique
  ({o.drone_pitch_min:g}-{o.drone_pitch_max:g} deg down); headings along the line, every other shot turned
  90 deg, and turned towards the city near the edges of the flight
- frames {n_d}-{len(frames) - 1}: street level (~{o.street_height:g} m), walking every street, views along the
  street and sideways at the facades
- frame numbers follow the capture order (nerfstudio sorts by file name, so its order is the same)
{cov_line}
## Files
- `transforms.json`: nerfstudio format, `OPENCV` model with zero distortion, shared intrinsics;
  `transform_matrix` = camera-to-world, OpenGL convention (x right, y up, camera looks along -z),
  in world metres (nerfstudio re-centres/scales on load); pixel centres at (col+0.5, row+0.5)
- `sparse_pc.ply`: {o.num_points} points sampled on visible surfaces, with their rendered colours
- `gt/mesh.ply`: ground quad + building boxes (triangles); `gt/city.json`: options, bounds,
  buildings (min/max corners), street layout, per-frame kind (drone/street), pose angles, coverage
{depth_line}
Train: `ns-train nerfacto --data <this dir>` (dataparser `nerfstudio-data`).
"""


# --------------------------------------------------------------------------- driver
def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")


def generate_city(out: Path, seed: int = 0, *, options: Optional[CityOptions] = None, overwrite: bool = False,
                  progress: bool = True, verbose: bool = True, command: Optional[str] = None,
                  **overrides: Any) -> Path:
    """Generate a capture into ``out`` and return it.

    ``options`` (or defaults) are updated with ``overrides`` (field names of
    ``CityOptions``).  Output is written to a sibling temp dir and renamed into
    place at the end, so ``out`` is either absent/old or complete.
    """
    opts = dataclasses.replace(options or CityOptions(), **overrides)
    if isinstance(opts.street_headings, (int, float)):
        opts.street_headings = (float(opts.street_headings),)
    opts.street_headings = tuple(float(h) for h in opts.street_headings)
    opts.validate()
    out = Path(out)
    _prepare_out(out, overwrite)
    t_start = time.perf_counter()

    city = build_city(seed, opts)
    frames = make_cameras(city)
    if not frames:
        raise ValueError("the camera options produced no frames")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "gt").mkdir()
        if opts.write_depth:
            (tmp / "gt" / "depth").mkdir()
        from PIL import Image
        from tqdm import tqdm

        rng_pts = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(4)[3])
        per_frame = -(-opts.num_points // len(frames)) if opts.num_points else 0
        pts, cols = [], []
        fx, fy, cx, cy = intrinsics(opts)
        tf_frames, gt_frames = [], []
        for idx, fr in enumerate(tqdm(frames, desc="rendering", unit="img", disable=not progress)):
            name = f"frame_{idx:05d}"
            r = render_frame(city, fr, want_depth=opts.write_depth, n_points=per_frame, rng=rng_pts)
            Image.fromarray(r["rgb"]).save(tmp / "images" / f"{name}.png", compress_level=9)
            if opts.write_depth:
                np.save(tmp / "gt" / "depth" / f"{name}.npy", r["depth"])
            if "points" in r:
                pts.append(r["points"])
                cols.append(r["colors"])
            tf_frames.append(dict(file_path=f"images/{name}.png",
                                  transform_matrix=[[float(v) for v in row] for row in fr.c2w]))
            gt_frames.append(dict(index=idx, file_path=f"images/{name}.png", kind=fr.kind, path_id=fr.path_id,
                                  position=[round(float(v), 6) for v in fr.position],
                                  yaw_deg=round(fr.yaw_deg, 4), pitch_deg=round(fr.pitch_deg, 4)))

        P = np.concatenate(pts)[: opts.num_points] if pts else np.zeros((0, 3))
        C = np.concatenate(cols)[: opts.num_points] if cols else np.zeros((0, 3), np.uint8)
        write_ply(tmp / "sparse_pc.ply", P, C)
        transforms = dict(camera_model="OPENCV", fl_x=fx, fl_y=fy, cx=cx, cy=cy,
                          w=opts.image_width, h=opts.image_height, k1=0.0, k2=0.0, p1=0.0, p2=0.0,
                          frames=tf_frames, ply_file_path="sparse_pc.ply")
        (tmp / "transforms.json").write_text(json.dumps(transforms, indent=2) + "\n")
        vertices, faces, colors = city_mesh(city)
        write_ply(tmp / "gt" / "mesh.ply", vertices, colors, faces)

        # Coverage costs points x frames x boxes ray tests; skip for huge cities.
        n_cov = (8 + len(city.bmin) / (opts.blocks_x * opts.blocks_y)) * opts.blocks_x * opts.blocks_y
        cov = coverage(city, frames) if n_cov * len(frames) * len(city.bmin) <= 2e8 else None
        xmin, xmax, ymin, ymax = city.bounds
        gt = dict(
            generator="tools/make_city.py", seed=int(seed), style=city.style_name, options=opts.to_json(),
            world_frame="z up, metres, ground z=0, origin at city centre",
            camera_convention="transform_matrix is camera-to-world, OpenGL (x right, y up, camera looks along -z); "
                              "pixel centres at (col+0.5, row+0.5); fov_deg is horizontal",
            bounds=dict(city=[[xmin, ymin, 0.0], [xmax, ymax, city.max_height]],
                        ground=[[city.ground_bounds[0], city.ground_bounds[2], 0.0],
                                [city.ground_bounds[1], city.ground_bounds[3], 0.0]]),
            streets=dict(blocks_x=opts.blocks_x, blocks_y=opts.blocks_y, block_size=opts.block_size,
                         street_width=opts.street_width, sidewalk_width=opts.sidewalk_width, pitch=city.pitch,
                         x_street_centres=[xmin + opts.street_width / 2 + i * city.pitch for i in range(opts.blocks_x + 1)],
                         y_street_centres=[ymin + opts.street_width / 2 + j * city.pitch for j in range(opts.blocks_y + 1)],
                         block_min_corners=[[[xmin + opts.street_width + i * city.pitch,
                                              ymin + opts.street_width + j * city.pitch]
                                             for j in range(opts.blocks_y)] for i in range(opts.blocks_x)],
                         yards=[[_YARD_TYPES[int(city.yard[i, j])] for j in range(opts.blocks_y)]
                                for i in range(opts.blocks_x)]),
            sun_direction=[float(v) for v in city.sun],
            drone_altitude=drone_altitude(city) if opts.drone else None,
            buildings=[dict(id=m, block=[int(v) for v in city.block_of[m]],
                            min=[float(v) for v in city.bmin[m]], max=[float(v) for v in city.bmax[m]],
                            wall_rgb=[round(float(v), 4) for v in city.wall[m]])
                       for m in range(len(city.bmin))],
            depth=(dict(kind="z_depth", units="metres", description="distance along the camera optical axis "
                        "(-z of the camera) at pixel centres; 0 where the ray hits the sky", dtype="float32",
                        path="gt/depth/frame_XXXXX.npy") if opts.write_depth else None),
            coverage=cov,
            frames=gt_frames,
        )
        (tmp / "gt" / "city.json").write_text(json.dumps(gt, indent=1) + "\n")
        cmd = command or _equivalent_command(out, seed, opts)
        (tmp / "README.md").write_text(_readme(city, frames, cmd, cov))

        # Atomic-ish swap: the old capture (if --overwrite) is moved aside first.
        _prepare_out(out, overwrite)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    if verbose:
        n_d = sum(f.kind == "drone" for f in frames)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        xmin, xmax, ymin, ymax = city.bounds
        print(f"[make_city] {out}: {len(frames)} images ({n_d} drone, {len(frames) - n_d} street) "
              f"{opts.image_width}x{opts.image_height}, {len(city.bmin)} buildings, style {city.style_name}, "
              f"city bounds x[{xmin:.1f},{xmax:.1f}] y[{ymin:.1f},{ymax:.1f}] z[0,{city.max_height:.1f}] m, "
              f"{len(P)} points, {size / 1e6:.2f} MB, {time.perf_counter() - t_start:.1f} s")
        if cov is not None:
            print(f"[make_city] coverage: every sample point seen in >= {cov['min_views']} frames; per block the "
                  f"median point is seen from >= {cov['min_median_directions']:g} of 4 azimuth sectors")
    return out


# --------------------------------------------------------------------------- CLI
def _headings(s: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated degrees, got {s!r}") from e


def build_parser() -> argparse.ArgumentParser:
    d = CityOptions()
    p = argparse.ArgumentParser(
        prog="make_city.py",
        description="Generate a deterministic synthetic city capture (nerfstudio format + ground truth).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output capture directory")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g = p.add_argument_group("layout")
    g.add_argument("--blocks-x", type=int, default=d.blocks_x, help="number of city blocks along x")
    g.add_argument("--blocks-y", type=int, default=d.blocks_y, help="number of city blocks along y")
    g.add_argument("--block-size", type=float, default=d.block_size, help="city block side (m)")
    g.add_argument("--street-width", type=float, default=d.street_width, help="street width, kerb to kerb (m)")
    g.add_argument("--sidewalk-width", type=float, default=d.sidewalk_width, help="sidewalk width inside each block (m)")
    g.add_argument("--style", default=d.style, choices=sorted(STYLES) + ["random"],
                   help="palette/height preset; 'random' picks one from the seed")
    g.add_argument("--min-height", type=float, default=None, help="override the style's minimum building height (m)")
    g.add_argument("--max-height", type=float, default=None, help="override the style's maximum building height (m)")
    g.add_argument("--ground-margin", type=float, default=d.ground_margin,
                   help="countryside ground around the city (m); beyond it rays see the sky/haze")
    g = p.add_argument_group("rendering")
    g.add_argument("--image-width", type=int, default=d.image_width, help="image width (px)")
    g.add_argument("--image-height", type=int, default=d.image_height, help="image height (px)")
    g.add_argument("--fov-deg", type=float, default=d.fov_deg, help="horizontal field of view (deg)")
    g.add_argument("--supersample", type=int, default=d.supersample, help="SxS rays per pixel (anti-aliasing)")
    g.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=d.shadows, help="cast sun shadows")
    g = p.add_argument_group("drone (lawnmower flight)")
    g.add_argument("--drone", action=argparse.BooleanOptionalAction, default=d.drone, help="render drone views")
    g.add_argument("--drone-altitude", type=float, default=None,
                   help="flight altitude (m); default drone_altitude_factor x tallest building (>= 20 m)")
    g.add_argument("--drone-altitude-factor", type=float, default=d.drone_altitude_factor,
                   help="altitude as a multiple of the tallest building")
    g.add_argument("--drone-line-spacing", type=float, default=None,
                   help="distance between flight lines (m); default 0.6 x altitude")
    g.add_argument("--drone-step", type=float, default=None,
                   help="distance between shots along a line (m); default 0.25 x altitude")
    g.add_argument("--drone-margin", type=float, default=None,
                   help="fly this far beyond the city edge (m); default 0.3 x altitude")
    g.add_argument("--drone-pitch-min", type=float, default=d.drone_pitch_min, help="min pitch below horizon (deg)")
    g.add_argument("--drone-pitch-max", type=float, default=d.drone_pitch_max, help="max pitch below horizon (deg)")
    g.add_argument("--drone-rotate", action=argparse.BooleanOptionalAction, default=d.drone_rotate,
                   help="turn every other shot 90 deg left/right of the flight line")
    g = p.add_argument_group("street level")
    g.add_argument("--street-paths", default=d.street_paths, choices=["all", "interior", "none"],
                   help="which streets to walk (interior = not the perimeter ring)")
    g.add_argument("--street-step", type=float, default=d.street_step, help="distance between stops along a street (m)")
    g.add_argument("--street-headings", type=_headings, default=d.street_headings,
                   help="comma-separated view headings per stop, deg relative to travel (0 fwd, 90 left, -90 right)")
    g.add_argument("--street-height", type=float, default=d.street_height, help="camera height (m)")
    g.add_argument("--street-pitch-forward", type=float, default=d.street_pitch_forward,
                   help="pitch above horizon of forward views (deg)")
    g.add_argument("--street-pitch-side", type=float, default=d.street_pitch_side,
                   help="pitch above horizon of sideways (facade) views (deg)")
    g = p.add_argument_group("outputs")
    g.add_argument("--num-points", type=int, default=d.num_points, help="points in sparse_pc.ply")
    g.add_argument("--write-depth", action="store_true", help="write gt/depth/*.npy z-depth maps")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(CityOptions)}
    opts = CityOptions(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        opts.validate()
    except ValueError as e:
        parser.error(str(e))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "tools/make_city.py", *argv_list])
    try:
        generate_city(args.out, args.seed, options=opts, overwrite=args.overwrite, progress=not args.quiet,
                      verbose=not args.quiet, command=command)
    except FileExistsError as e:
        print(f"make_city: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

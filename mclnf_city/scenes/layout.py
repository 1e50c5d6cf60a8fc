"""The city's layout: blocks, streets, box buildings and their parameters, and its ground-truth mesh."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from mclnf_city.scenes.options import STYLES, YARD_TYPES, CityOptions


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
    yard: np.ndarray  # (blocks_x, blocks_y) index into YARD_TYPES
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
            yard[i, j] = YARD_TYPES.index(yard_names[rng_layout.choice(len(yard_names), p=yard_p)])
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

"""Independent procedural scene generator: a "capture zoo" of synthetic nerfstudio captures.

A second generator, written apart from `mclnf_city.scenes.make_city`, so the method meets
captures it was not shaped around: rotated and odd-shaped buildings, nadir lawnmowers,
one-altitude oblique serpentines (nearly parallel principal rays), orbits, street walks, any
scale and orientation.

Everything is a vectorised numpy ray caster over analytic primitives (ground plane, convex
polyhedra for rotated boxes and gable roofs, vertical cylinders, spheres), shaded with a sun
(Lambert + optional hard shadows), a hemispheric ambient term and a gradient sky with a sun disc.
The scene is built in a local frame (z up, metres, ground z=0); the preset's global transform
p' = s R p + t is applied to every written position (cameras, points, bounding box).

Outputs of one capture: images/frame_XXXXX.png, transforms.json (OPENCV, no distortion),
sparse_pc.ply (only presets with points), gt/visible_points.npz, gt/scene.json, README.md.

    mclnf-scene-zoo --list
    mclnf-scene-zoo --preset oblique_serpentine --out /tmp/obl [--seed 0 --width 160 --height 120 --frames 48 --overwrite]

(or `python -m mclnf_city.scenes.zoo ...`, the same command from a checkout).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from mclnf_city.files import write_ply

LAYOUTS = ("grid", "village", "landmark", "street")
FLIGHTS = ("nadir", "oblique", "orbit", "street", "mixed")
ROTATIONS = ("none", "random", "zdown", "yup")
GROUNDS = ("paving", "grass", "dirt")
KINDS = ("box", "house", "lshape", "tower")
EPS = 1e-3  # metres (local frame): minimum hit distance, shadow-ray offset


@dataclass
class SceneOptions:
    """All knobs of one capture. Lengths are metres in the local z-up frame (before the global transform)."""

    name: str = "custom"
    description: str = ""
    layout: str = "grid"  # grid | village | landmark | street
    flight: str = "nadir"  # nadir | oblique | orbit | street | mixed
    frames: int = 48
    width: int = 160
    height: int = 120
    fov_deg: float = 65.0  # horizontal field of view
    # layout
    blocks: int = 3  # grid: blocks per side
    buildings: int = 14  # village: buildings; landmark: neighbours of the tower
    kinds: Tuple[str, ...] = KINDS  # building kinds the layout may use
    trees: int = 0
    street_length: float = 120.0
    ground: str = "paving"  # surface off the roads: paving | grass | dirt
    # lighting
    sky: str = "day"  # a key of SKIES
    shadows: bool = True
    # flight
    altitude: Optional[float] = None  # drone altitude; None: from the scene height / overlap
    pitch_deg: float = -40.0  # oblique pitch
    heading: str = "along"  # oblique: "along" (forward/backward) or "across" (left/right)
    overlap: float = 0.7  # nadir forward overlap
    lines: Optional[int] = None  # flight lines; None: automatic
    orbit_rings: int = 2
    # outputs
    points: bool = False  # write sparse_pc.ply
    n_points: int = 2000
    gt_per_frame: int = 4000
    gt_total: int = 200_000
    # global transform p' = scale * R p + translation
    scale: float = 1.0
    rotation: str = "none"  # none | random (seeded) | zdown (up is -z) | yup (up is +y)
    translation: Tuple[float, float, float] = (0.0, 0.0, 0.0)


SKIES: Dict[str, dict] = {
    # zenith / horizon colours, sun colour, sun azimuth/elevation (deg), ambient level, ambient tint
    "day": dict(zenith=(0.22, 0.42, 0.85), horizon=(0.74, 0.84, 0.95), sun=(1.0, 0.96, 0.88), az=135, el=50, ambient=0.38, tint=(0.92, 0.96, 1.05)),
    "noon": dict(zenith=(0.18, 0.40, 0.92), horizon=(0.70, 0.82, 0.97), sun=(1.0, 1.0, 0.95), az=215, el=60, ambient=0.4, tint=(0.95, 0.98, 1.05)),
    "golden": dict(zenith=(0.30, 0.40, 0.70), horizon=(1.0, 0.72, 0.45), sun=(1.0, 0.80, 0.52), az=250, el=20, ambient=0.36, tint=(1.08, 0.95, 0.85)),
    "overcast": dict(zenith=(0.60, 0.62, 0.67), horizon=(0.80, 0.80, 0.82), sun=(0.75, 0.75, 0.75), az=90, el=60, ambient=0.62, tint=(1.0, 1.0, 1.0)),
    "cool": dict(zenith=(0.14, 0.28, 0.62), horizon=(0.60, 0.74, 0.90), sun=(0.86, 0.92, 1.0), az=60, el=35, ambient=0.42, tint=(0.85, 0.95, 1.12)),
    "dusk": dict(zenith=(0.14, 0.14, 0.36), horizon=(0.92, 0.52, 0.40), sun=(1.0, 0.62, 0.42), az=300, el=12, ambient=0.45, tint=(1.0, 0.86, 0.92)),
}

ZOO: Dict[str, SceneOptions] = {
    o.name: o
    for o in [
        SceneOptions("nadir_grid", "nadir lawnmower (fixed heading) over a 3x3-block grid town", "grid", "nadir", sky="day"),
        SceneOptions("oblique_serpentine", "oblique serpentine at one altitude, forward/backward, village of gabled houses and L-shapes",
                     "village", "oblique", kinds=("house", "lshape"), ground="grass", sky="golden", pitch_deg=-40.0),
        SceneOptions("orbit_tower", "two orbit rings around a stepped cylinder tower with neighbours", "landmark", "orbit",
                     buildings=7, sky="cool", ground="paving"),
        SceneOptions("street_walk", "street-level walk (1.7 m) along a street lined on both sides", "street", "street", sky="noon"),
        SceneOptions("mixed_drone_street", "oblique drone frames + street-level frames, sparse points", "street", "mixed",
                     sky="overcast", ground="dirt", pitch_deg=-45.0, points=True),
        SceneOptions("tiny_scale_rotated", "oblique flight, scale 0.01, seeded random world rotation", "village", "oblique",
                     kinds=("box", "house", "lshape"), sky="cool", ground="dirt", pitch_deg=-35.0, scale=0.01,
                     rotation="random", translation=(0.7, -0.4, 1.3)),
        SceneOptions("huge_scale_zdown", "oblique flight over a grid town, scale 100, up is -z", "grid", "oblique", blocks=2,
                     sky="golden", pitch_deg=-50.0, scale=100.0, rotation="zdown", translation=(2.0e4, -1.0e4, 5.0e3)),
        SceneOptions("village_points_rotated", "village with trees, oblique left/right, random rotation, sparse points",
                     "village", "oblique", trees=14, ground="grass", sky="day", heading="across", pitch_deg=-45.0,
                     rotation="random", points=True, translation=(-12.0, 30.0, 4.0)),
        SceneOptions("orbit_yup_points", "single orbit ring around the tower, y-up world at scale 10, sparse points", "landmark",
                     "orbit", orbit_rings=1, sky="dusk", ground="grass", trees=8, scale=10.0, rotation="yup", points=True),
        SceneOptions("nadir_village_zdown", "nadir lawnmower over a village with trees, scale 0.001, up is -z", "village", "nadir",
                     trees=10, ground="grass", sky="overcast", scale=0.001, rotation="zdown"),
    ]
}


# --------------------------------------------------------------------------- procedural texture


def _hash01(ix: np.ndarray, iy: np.ndarray, seed) -> np.ndarray:
    """Integer lattice hash -> float32 in [0, 1]. Wraps in uint32 so results are platform independent."""
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263 + np.asarray(seed, np.int64) * 144665) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) * np.float32(1.0 / 65535.0)


def _value_noise(x: np.ndarray, y: np.ndarray, seed) -> np.ndarray:
    """Smooth value noise with unit lattice spacing."""
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = (x - xf).astype(np.float32), (y - yf).astype(np.float32)
    ix, iy = xf.astype(np.int64), yf.astype(np.int64)
    ux, uy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a, b = _hash01(ix, iy, seed), _hash01(ix + 1, iy, seed)
    c, d = _hash01(ix, iy + 1, seed), _hash01(ix + 1, iy + 1, seed)
    return a + (b - a) * ux + (c - a) * uy + (a - b - c + d) * ux * uy


def _fade(wavelength, footprint) -> np.ndarray:
    """1 where a pattern of this wavelength is well sampled by the pixel footprint, 0 where it would alias."""
    return np.clip((0.5 * wavelength - footprint) / (0.25 * wavelength), 0.0, 1.0).astype(np.float32)


def _fbm(x, y, seed, wavelength: float, octaves: int, footprint) -> np.ndarray:
    """Fractal value noise around 0.5; octaves finer than the pixel footprint fade to their mean (cheap mip-mapping)."""
    total = np.zeros(np.shape(x), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        w = _fade(wavelength, footprint)
        norm += amp
        if w.max(initial=0.0) > 0:
            total += amp * w * (_value_noise(x / wavelength, y / wavelength, seed + 17 * o) - 0.5)
        amp *= 0.6
        wavelength *= 0.5
    return 0.5 + 1.6 * total / norm


def _frac(x):
    return x - np.floor(x)


def _lines(v, period, width, fp) -> np.ndarray:
    """Coverage of parallel lines (width, every period): sharp where the footprint resolves them, their mean where not."""
    a = _fade(4 * width, fp)
    return a * (_frac(v / period) < width / period) + (1 - a) * (width / period)


def _grid(x, y, period, width, fp) -> np.ndarray:
    """Coverage of a square grid of joints."""
    return 1 - (1 - _lines(x, period, width, fp)) * (1 - _lines(y, period, width, fp))


# --------------------------------------------------------------------------- geometry


class Scene:
    """Analytic primitives in the local frame, with a vectorised nearest-hit ray caster.

    Convex polyhedra (rotated boxes, gable prisms) are stored as 6 half-spaces n.p <= d and hit with
    the Cyrus-Beck slab test; vertical cylinders and spheres use their quadratics. Every primitive
    also has a bounding sphere used to cull it for a chunk of rays before the exact test.
    """

    def __init__(self):
        self.planes: List[np.ndarray] = []  # [6, 4] (nx, ny, nz, d)
        self.cyls: List[Tuple[float, ...]] = []  # (cx, cy, r, z0, z1)
        self.spheres: List[Tuple[float, ...]] = []  # (cx, cy, cz, r)
        self.meta = {"poly": [], "cyl": [], "sph": []}  # per primitive: (material, building, yaw, bx, by, bz, br)
        self.extent_points: List[np.ndarray] = []  # points whose bbox is the geometry bbox
        self.buildings: List[dict] = []
        self.ground_half = (100.0, 100.0)

    # ---- construction
    def add_poly(self, normals, ds, corners, mat, bid, yaw):
        planes = np.concatenate([np.asarray(normals, np.float64), np.asarray(ds, np.float64)[:, None]], 1)
        planes = np.concatenate([planes, planes[: 6 - len(planes)]])  # pad with a repeated (harmless) plane
        corners = np.asarray(corners, np.float64)
        c = 0.5 * (corners.min(0) + corners.max(0))
        self.planes.append(planes)
        self.meta["poly"].append((mat, bid, yaw, *c, np.linalg.norm(corners - c, axis=1).max()))
        self.extent_points.append(corners)

    def add_box(self, cx, cy, yaw, a, b, z0, z1, bid, mat=1):
        """Box of half sizes (a, b) rotated by yaw about z, from z0 to z1."""
        ex, ey, C = np.array([math.cos(yaw), math.sin(yaw), 0]), np.array([-math.sin(yaw), math.cos(yaw), 0]), np.array([cx, cy, 0])
        normals = [ex, -ex, ey, -ey, (0, 0, -1), (0, 0, 1)]
        ds = [ex @ C + a, -ex @ C + a, ey @ C + b, -ey @ C + b, -z0, z1]
        corners = [C + sx * a * ex + sy * b * ey + (0, 0, z) for sx in (-1, 1) for sy in (-1, 1) for z in (z0, z1)]
        self.add_poly(normals, ds, corners, mat, bid, yaw)

    def add_prism(self, cx, cy, yaw, a, b, z0, rise, bid):
        """Gable roof: triangular prism with its ridge along the local x axis (half length a, half width b)."""
        R = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        C = np.array([cx, cy, 0.0])
        s1, s2 = np.array([0, rise, b]), np.array([0, -rise, b])
        local = [((1, 0, 0), a), ((-1, 0, 0), a), ((0, 0, -1), -z0),
                 (s1 / np.linalg.norm(s1), s1 @ (0, b, z0) / np.linalg.norm(s1)),
                 (s2 / np.linalg.norm(s2), s2 @ (0, -b, z0) / np.linalg.norm(s2))]
        normals = [R @ np.asarray(n, float) for n, _ in local]
        ds = [d + n @ C for (_, d), n in zip(local, normals)]
        corners = [C + R @ np.array(p) for sx in (-a, a) for p in ((sx, -b, z0), (sx, b, z0), (sx, 0, z0 + rise))]
        self.add_poly(normals, ds, corners, 1, bid, yaw)

    def add_cylinder(self, cx, cy, r, z0, z1, bid, mat=1):
        self.cyls.append((cx, cy, r, z0, z1))
        self.meta["cyl"].append((mat, bid, 0.0, cx, cy, 0.5 * (z0 + z1), math.hypot(r, 0.5 * (z1 - z0))))
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ring = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang), np.zeros_like(ang)], 1)
        self.extent_points += [ring + (0, 0, z0), ring + (0, 0, z1)]

    def add_sphere(self, cx, cy, cz, r, bid, mat=3):
        self.spheres.append((cx, cy, cz, r))
        self.meta["sph"].append((mat, bid, 0.0, cx, cy, cz, r))
        self.extent_points.append(np.array([[cx - r, cy - r, cz - r], [cx + r, cy + r, cz + r]]))

    def finalize(self):
        """Stack primitives into arrays; global primitive ids are polys, then cylinders, then spheres."""
        f32 = lambda a, n: np.asarray(a, np.float32).reshape(-1, n)  # noqa: E731
        self.P = f32(self.planes, 24).reshape(-1, 6, 4)
        self.C, self.S = f32(self.cyls, 5), f32(self.spheres, 4)
        meta = np.asarray(self.meta["poly"] + self.meta["cyl"] + self.meta["sph"], np.float64).reshape(-1, 7)
        self.mat, self.bid, self.yaw = meta[:, 0].astype(int), meta[:, 1].astype(int), meta[:, 2].astype(np.float32)
        self.bcenter, self.bradius = meta[:, 3:6].astype(np.float32), meta[:, 6].astype(np.float32)
        self.n_poly, self.n_cyl = len(self.P), len(self.C)
        # per-building texture parameters as arrays (trees only use their seed)
        defaults = dict(wall=(0.5, 0.5, 0.5), roof=(0.3, 0.3, 0.3), spacing=3.0, floor=3.0, wx=0.5, wy=0.5, ribbon=0.0, style=0.0, seed=1)
        self.bparams = {k: np.array([b.get(k, v) for b in self.buildings] or [v], np.int64 if k == "seed" else np.float32) for k, v in defaults.items()}
        return self

    def bbox(self) -> np.ndarray:
        return np.stack([np.concatenate(self.extent_points).min(0), np.concatenate(self.extent_points).max(0)])

    def inside(self, p: np.ndarray) -> np.ndarray:
        """Which points lie inside any solid (cameras must not)."""
        p = np.atleast_2d(p).astype(np.float32)
        res = np.zeros(len(p), bool)
        if self.n_poly:
            res |= ((p @ self.P[..., :3].reshape(-1, 3).T).reshape(len(p), -1, 6) <= self.P[None, ..., 3] + 0.3).all(-1).any(-1)
        for cx, cy, r, z0, z1 in self.C:
            res |= (np.hypot(p[:, 0] - cx, p[:, 1] - cy) < r + 0.3) & (p[:, 2] > z0 - 0.3) & (p[:, 2] < z1 + 0.3)
        for cx, cy, cz, r in self.S:
            res |= np.linalg.norm(p - (cx, cy, cz), axis=1) < r + 0.3
        return res

    # ---- ray casting
    def trace(self, o: np.ndarray, d: np.ndarray, ground: bool = True, chunk: int = 1536):
        """Nearest hits of rays o + t d (o [1|R,3], d [1|R,3] unit). Returns t (inf: miss), normal [R,3], id (-1 sky, -2 ground)."""
        o, d = np.atleast_2d(o).astype(np.float32), np.atleast_2d(d).astype(np.float32)
        R = max(len(o), len(d))
        t, n, pid = np.full(R, np.inf, np.float32), np.zeros((R, 3), np.float32), np.full(R, -1, np.int64)
        for s in range(0, R, chunk):
            sl = slice(s, min(R, s + chunk))
            t[sl], n[sl], pid[sl] = self._trace_chunk(o if len(o) == 1 else o[sl], d if len(d) == 1 else d[sl], ground)
        return t, n, pid

    def _trace_chunk(self, o, d, ground):
        R = max(len(o), len(d))
        best_t, best_n, best_id = np.full(R, np.inf, np.float32), np.zeros((R, 3), np.float32), np.full(R, -1, np.int64)
        if ground:  # finite ground plane z=0, seen from above
            with np.errstate(divide="ignore", invalid="ignore"):
                tg = np.broadcast_to(-o[:, 2] / d[:, 2], (R,))
            pg = o + tg[:, None] * d
            ok = (tg > EPS) & (np.abs(pg[:, 0]) <= self.ground_half[0]) & (np.abs(pg[:, 1]) <= self.ground_half[1])
            best_t = np.where(ok, tg, np.inf).astype(np.float32)
            best_n[ok] = (0, 0, 1)
            best_id[ok] = -2
        live = self._cull(o, d)
        groups = ((0, self.n_poly, self._hit_polys), (self.n_poly, self.n_cyl, self._hit_cyls),
                  (self.n_poly + self.n_cyl, len(self.S), self._hit_spheres))
        for offset, count, fn in groups:
            idx = np.nonzero(live[offset:offset + count])[0]
            if idx.size == 0:
                continue
            t, normal_fn = fn(o, d, idx)
            j = t.argmin(1)
            tj = t[np.arange(R), j]
            better = tj < best_t
            if better.any():
                best_t = np.where(better, tj, best_t)
                best_n[better] = normal_fn(better, j[better], tj[better])
                best_id[better] = offset + idx[j[better]]
        return best_t, best_n, best_id

    def _cull(self, o, d):
        """Primitives whose bounding sphere any ray of the chunk passes through (shared origin or shared direction is cheap)."""
        C, r = self.bcenter, self.bradius
        if len(C) == 0:
            return np.zeros(0, bool)
        if len(o) == 1:
            w = C - o[0]
            proj, w2 = d @ w.T, (w * w).sum(1)
        elif len(d) == 1:
            w = C[None] - o[:, None]
            proj, w2 = w @ d[0], (w * w).sum(2)
        else:
            w = C[None] - o[:, None]
            proj, w2 = (w * d[:, None]).sum(2), (w * w).sum(2)
        return ((w2 - proj * proj <= r * r) & (proj >= -r)).any(0)

    def _hit_polys(self, o, d, idx):
        P = self.P[idx]  # [m, 6, 4]
        N = P[..., :3].reshape(-1, 3)
        num = P[..., 3].reshape(1, -1) - o @ N.T  # [Ro, 6m]
        den = d @ N.T  # [Rd, 6m]
        R, m = max(len(o), len(d)), len(idx)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (num / den).reshape(R, m, 6)
        den = np.broadcast_to(den, (R, 6 * m)).reshape(R, m, 6)
        t_in_all = np.where(den < 0, t, -np.inf)
        k = t_in_all.argmax(2)
        t_in = np.take_along_axis(t_in_all, k[..., None], 2)[..., 0]
        t_out = np.where(den > 0, t, np.inf).min(2)
        parallel_out = ((den == 0) & (np.broadcast_to(num, (R, 6 * m)).reshape(R, m, 6) < 0)).any(2)
        hit = (t_in <= t_out) & (t_in > EPS) & ~parallel_out
        t_hit = np.where(hit, t_in, np.inf).astype(np.float32)

        def normals(rows, j, _t):
            return P[j, k[rows, j], :3]

        return t_hit, normals

    def _hit_cyls(self, o, d, idx):
        C = self.C[idx]
        cx, cy, r, z0, z1 = (C[:, i] for i in range(5))
        ox, oy, oz = o[:, 0:1] - cx, o[:, 1:2] - cy, o[:, 2:3]
        dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
        a = np.maximum(dx * dx + dy * dy, 1e-12)
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - r * r
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0))
        t1, t2 = (-b - sq) / a, (-b + sq) / a
        dzs = np.where(np.abs(dz) < 1e-9, 1e-9, dz)
        ta, tb = (z0 - oz) / dzs, (z1 - oz) / dzs
        tz0, tz1 = np.minimum(ta, tb), np.maximum(ta, tb)
        t_in, t_out = np.maximum(t1, tz0), np.minimum(t2, tz1)
        hit = (disc >= 0) & (t_in <= t_out) & (t_in > EPS)
        t_hit = np.where(hit, t_in, np.inf).astype(np.float32)
        side = t1 >= tz0

        def normals(rows, j, t):
            oo, dd = (o[rows] if len(o) > 1 else o), (d[rows] if len(d) > 1 else d)
            p = oo + t[:, None] * dd
            radial = np.stack([p[:, 0] - C[j, 0], p[:, 1] - C[j, 1], np.zeros_like(t)], 1) / C[j, 2:3]
            cap = np.zeros_like(radial)
            cap[:, 2] = -np.sign(dd[:, 2])
            return np.where(side[rows, j][:, None], radial, cap)

        return t_hit, normals

    def _hit_spheres(self, o, d, idx):
        S = self.S[idx]
        oc = o[:, None, :] - S[None, :, :3]
        b = (oc * d[:, None, :]).sum(2)
        c = (oc * oc).sum(2) - S[:, 3] ** 2
        disc = b * b - c
        t_in = -b - np.sqrt(np.maximum(disc, 0))
        t_hit = np.where((disc >= 0) & (t_in > EPS), t_in, np.inf).astype(np.float32)

        def normals(rows, j, t):
            p = (o[rows] if len(o) > 1 else o) + t[:, None] * (d[rows] if len(d) > 1 else d)
            return (p - S[j, :3]) / S[j, 3:4]

        return t_hit, normals


# --------------------------------------------------------------------------- buildings and layouts

WALLS = np.array([[0.86, 0.80, 0.68], [0.74, 0.42, 0.30], [0.62, 0.62, 0.64], [0.92, 0.90, 0.86], [0.80, 0.64, 0.36],
                  [0.58, 0.68, 0.78], [0.66, 0.56, 0.48], [0.80, 0.74, 0.80], [0.50, 0.55, 0.50]], np.float32)
ROOFS = np.array([[0.32, 0.32, 0.34], [0.62, 0.28, 0.20], [0.36, 0.40, 0.46], [0.52, 0.50, 0.46], [0.40, 0.26, 0.20]], np.float32)


def _design(kind: str, rng) -> Tuple[list, float, float]:
    """Parts of one building in its own frame (centred on its footprint) and the footprint half sizes."""
    if kind == "box":
        a, b, h = rng.uniform(4.5, 9.5), rng.uniform(4.0, 7.5), rng.uniform(8, 26)
        parts = [("box", 0.0, 0.0, a, b, 0.0, h)]
    elif kind == "tower":
        r, h = rng.uniform(3.5, 6.0), rng.uniform(22, 38)
        parts = [("cyl", 0.0, 0.0, r, 0.0, h)] + ([("cyl", 0.0, 0.0, 0.6 * r, h, h + rng.uniform(4, 8))] if rng.random() < 0.6 else [])
    elif kind == "house":
        a, b, h = rng.uniform(4.0, 7.0), rng.uniform(3.0, 4.5), rng.uniform(3.5, 7.0)
        parts = [("box", 0.0, 0.0, a, b, 0.0, h), ("prism", 0.0, 0.0, a + 0.4, b + 0.4, h, rng.uniform(0.55, 0.9) * b)]
    elif kind == "lshape":  # main wing plus a wing at one end, at another height
        a1, b1, h1 = rng.uniform(6, 10), rng.uniform(3, 5), rng.uniform(6, 18)
        a2, b2 = rng.uniform(2.5, 0.5 * a1), rng.uniform(3, 6.5)
        parts = [("box", 0.0, 0.0, a1, b1, 0.0, h1), ("box", a1 - a2, b1 + b2 - 0.3, a2, b2, 0.0, h1 * rng.uniform(0.5, 1.0))]
    else:
        raise ValueError(f"unknown building kind {kind!r}; known: {', '.join(KINDS)}")
    lo = np.min([(p[1] - p[3], p[2] - (p[3] if p[0] == "cyl" else p[4])) for p in parts], 0)
    hi = np.max([(p[1] + p[3], p[2] + (p[3] if p[0] == "cyl" else p[4])) for p in parts], 0)
    c = 0.5 * (lo + hi)
    parts = [(p[0], p[1] - c[0], p[2] - c[1], *p[3:]) for p in parts]
    return parts, *(0.5 * (hi - lo))


def _fit(parts, hx, hy, yaw, room_x, room_y):
    """Shrink a design horizontally so that, turned by yaw, it fits a (room_x, room_y) half-size lot."""
    ex = hx * abs(math.cos(yaw)) + hy * abs(math.sin(yaw))
    ey = hx * abs(math.sin(yaw)) + hy * abs(math.cos(yaw))
    f = min(1.0, room_x / ex, room_y / ey)
    shrunk = [(p[0], p[1] * f, p[2] * f, p[3] * f, *((p[4] * f,) if p[0] != "cyl" else (p[4],)), *p[5:]) for p in parts]
    return shrunk, hx * f, hy * f


@dataclass
class Site:
    """A laid-out scene: primitives plus what flights need to know about it."""

    scene: Scene
    half: Tuple[float, float]  # half sizes of the built-up area
    roads: List[Tuple[float, float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1, width
    circles: List[Tuple[float, float, float]] = field(default_factory=list)  # occupied footprints
    focus: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # orbit target
    max_h: float = 0.0

    def road_distance(self, x, y):
        """Distance to the nearest road edge (negative on the road), along-road coordinate, signed offset from its axis."""
        x, y = np.atleast_1d(np.asarray(x, np.float32)), np.atleast_1d(np.asarray(y, np.float32))
        best, along, off = np.full(x.shape, np.inf, np.float32), np.zeros(x.shape, np.float32), np.zeros(x.shape, np.float32)
        for x0, y0, x1, y1, w in self.roads:
            L = math.hypot(x1 - x0, y1 - y0)
            ux, uy = (x1 - x0) / L, (y1 - y0) / L
            s = (x - x0) * ux + (y - y0) * uy
            q = -(x - x0) * uy + (y - y0) * ux
            dist = np.hypot(np.clip(s, 0, L) - s, q) - w / 2
            closer = dist < best
            best, along, off = np.where(closer, dist, best), np.where(closer, s, along), np.where(closer, q, off)
        return best, along, off


def _add_building(site: Site, kind: str, parts, x, y, yaw, rng):
    """Place a designed building and give it its own colours and window grid."""
    sc = site.scene
    bid = len(sc.buildings)
    sc.buildings.append(dict(kind=kind, wall=WALLS[rng.integers(len(WALLS))] * rng.uniform(0.85, 1.1, 3).astype(np.float32),
                             roof=ROOFS[rng.integers(len(ROOFS))] * rng.uniform(0.85, 1.15, 3).astype(np.float32),
                             spacing=rng.uniform(2.2, 3.8), floor=rng.uniform(2.8, 3.6), wx=rng.uniform(0.35, 0.6),
                             wy=rng.uniform(0.4, 0.65), ribbon=float(kind in ("box", "tower") and rng.random() < 0.35),
                             style=float(rng.integers(3)),  # plaster, brick or panels
                             seed=int(rng.integers(1, 1 << 20))))
    c, s = math.cos(yaw), math.sin(yaw)
    for p in parts:
        px, py = x + c * p[1] - s * p[2], y + s * p[1] + c * p[2]
        if p[0] == "box":
            sc.add_box(px, py, yaw, p[3], p[4], p[5], p[6], bid)
        elif p[0] == "prism":
            sc.add_prism(px, py, yaw, p[3], p[4], p[5], p[6], bid)
        else:
            sc.add_cylinder(px, py, p[3], p[4], p[5], bid)
        site.max_h = max(site.max_h, p[6] if p[0] == "box" else (p[5] + p[6] if p[0] == "prism" else p[5]))


def _free(site: Site, x, y, r, clearance):
    if any(math.hypot(x - cx, y - cy) < r + cr + clearance for cx, cy, cr in site.circles):
        return False
    return not site.roads or float(site.road_distance(x, y)[0][0]) > r + 2.5  # keep a sidewalk clear


def _scatter(site: Site, rng, n, kinds, rect, clearance=2.0, tries=60, tree=False):
    """Rejection-sample n non-overlapping buildings (or trees) with random yaw inside rect (x0, x1, y0, y1)."""
    placed = 0
    for _ in range(n * tries):
        if placed == n:
            break
        if tree:
            r_crown, h = rng.uniform(1.6, 2.8), rng.uniform(2.0, 3.5)
            r = r_crown
        else:
            kind = kinds[rng.integers(len(kinds))]
            parts, hx, hy = _design(kind, rng)
            r = math.hypot(hx, hy)
        x0, x1, y0, y1 = rect
        if x1 - x0 < 2 * r or y1 - y0 < 2 * r:
            continue
        x, y = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
        if not _free(site, x, y, r, clearance):
            continue
        if tree:
            bid = len(site.scene.buildings)
            site.scene.buildings.append(dict(kind="tree", seed=int(rng.integers(1, 1 << 20))))
            site.scene.add_cylinder(x, y, 0.25, 0.0, h + 0.5 * r, bid, mat=2)
            site.scene.add_sphere(x, y, h + 0.7 * r, r, bid, mat=3)
        else:
            _add_building(site, kind, parts, x, y, rng.uniform(0, 2 * np.pi), rng)
        site.circles.append((x, y, r))
        placed += 1
    return placed


def _layout(opts: SceneOptions, rng) -> Site:
    """Build the preset's layout in the local frame."""
    kinds = tuple(opts.kinds)
    if opts.layout == "grid":
        pitch, road = 40.0, 10.0
        half = opts.blocks * pitch / 2
        site = Site(Scene(), (half + road / 2, half + road / 2))
        for k in range(opts.blocks + 1):
            v = -half + k * pitch
            site.roads += [(v, -half - road / 2, v, half + road / 2, road), (-half - road / 2, v, half + road / 2, v, road)]
        room = pitch / 2 - road / 2 - 3.0  # half size of a block's buildable area (sidewalk kept clear)
        for i in range(opts.blocks):
            for j in range(opts.blocks):
                bx, by = -half + (i + 0.5) * pitch, -half + (j + 0.5) * pitch
                nx, ny = [(2, 2), (2, 2), (2, 1), (1, 2), (1, 1)][rng.integers(5)]  # lots per block
                for li in range(nx):
                    for lj in range(ny):
                        if nx * ny > 1 and rng.random() < 0.12:  # an empty lot now and then
                            continue
                        lx, ly = room / nx, room / ny
                        cx, cy = bx - room + (2 * li + 1) * lx, by - room + (2 * lj + 1) * ly
                        kind = kinds[rng.integers(len(kinds))]
                        yaw = rng.integers(4) * np.pi / 2 + rng.normal(0, 0.25)  # near the street grid, never exactly on it
                        parts, hx, hy = _fit(*_design(kind, rng), yaw, lx - 0.6, ly - 0.6)
                        _add_building(site, kind, parts, cx, cy, yaw, rng)
                        site.circles.append((cx, cy, math.hypot(hx, hy)))
        _scatter(site, rng, opts.trees, kinds, (-half, half, -half, half), 1.0, tree=True)
    elif opts.layout == "village":
        half = 50.0
        site = Site(Scene(), (half, half))
        th = rng.uniform(0, np.pi)
        u = np.array([math.cos(th), math.sin(th)]) * half * 1.4
        v = np.array([-math.sin(th), math.cos(th)]) * half * 1.4 * (1 if rng.random() < 0.5 else -1)
        site.roads = [(-u[0], -u[1], u[0], u[1], 7.0), (0.0, 0.0, v[0], v[1], 6.0)]
        _scatter(site, rng, opts.buildings, kinds, (-half, half, -half, half), 2.5)
        _scatter(site, rng, opts.trees, kinds, (-half, half, -half, half), 1.0, tree=True)
    elif opts.layout == "landmark":
        half = 50.0
        site = Site(Scene(), (half, half))
        site.scene.buildings.append(dict(kind="landmark", wall=np.float32([0.78, 0.74, 0.66]), roof=np.float32([0.35, 0.36, 0.4]),
                                         spacing=2.6, floor=3.4, wx=0.5, wy=0.55, ribbon=0.0, style=2.0, seed=int(rng.integers(1, 1 << 20))))
        for r, z0, z1 in ((7.0, 0.0, 34.0), (4.5, 34.0, 46.0), (1.2, 46.0, 54.0)):  # stepped tower with a spire
            site.scene.add_cylinder(0.0, 0.0, r, z0, z1, 0)
        site.circles.append((0.0, 0.0, 9.0))
        site.focus, site.max_h = (0.0, 0.0, 22.0), 54.0
        site.roads = [(-half * 1.3, -44.0, half * 1.3, -44.0, 8.0)]
        _scatter(site, rng, min(opts.buildings, 8), [k for k in kinds if k != "tower"] or ["box"], (-40, 40, -40, 40), 3.0)
        _scatter(site, rng, opts.trees, kinds, (-45, 45, -45, 45), 1.0, tree=True)
    elif opts.layout == "street":
        L, road, walk = opts.street_length, 9.0, 3.0
        site = Site(Scene(), (L / 2 + 5, 35.0))
        site.roads = [(-L / 2 - 10, 0.0, L / 2 + 10, 0.0, road)]
        for side in (1, -1):  # a row of facades facing the street on each side
            x = -L / 2 + rng.uniform(0, 2)
            while True:
                kind = kinds[rng.integers(len(kinds))]
                parts, hx, hy = _design(kind, rng)
                yaw = (0.0 if side > 0 else np.pi) + rng.normal(0, 0.08)  # slightly off the street axis
                ex = hx * abs(math.cos(yaw)) + hy * abs(math.sin(yaw))
                ey = hx * abs(math.sin(yaw)) + hy * abs(math.cos(yaw))
                if x + 2 * ex > L / 2:
                    break
                cx, cy = x + ex, side * (road / 2 + walk + rng.uniform(0.2, 1.5) + ey)
                _add_building(site, kind, parts, cx, cy, yaw, rng)
                site.circles.append((cx, cy, math.hypot(hx, hy)))
                x += 2 * ex + rng.uniform(0.8, 3.5)
        for y0, y1 in ((18.0, 35.0), (-35.0, -18.0)):  # a looser second row behind, seen through the gaps
            _scatter(site, rng, int(L / 15), kinds, (-L / 2, L / 2, y0, y1), 1.5)
        _scatter(site, rng, opts.trees, kinds, (-L / 2, L / 2, -35, 35), 0.5, tree=True)
    else:
        raise ValueError(f"unknown layout {opts.layout!r}; known: {', '.join(LAYOUTS)}")
    hx, hy = site.half
    site.scene.ground_half = (1.6 * hx + 20, 1.6 * hy + 20)  # finite ground: beyond it, sky
    site.scene.extent_points.append(np.array([[-hx, -hy, 0.0], [hx, hy, 0.0]]))
    site.scene.finalize()
    return site


# --------------------------------------------------------------------------- flights


def _c2w(pos, heading, pitch) -> np.ndarray:
    """Camera-to-world (OpenGL: x right, y up, z back) looking along heading (rad from +x) and pitch (rad, <0 down)."""
    ch, sh, cp, sp = math.cos(heading), math.sin(heading), math.cos(pitch), math.sin(pitch)
    f = np.array([cp * ch, cp * sh, sp])
    right = np.array([sh, -ch, 0.0])  # from the heading, so it stays defined when looking straight down
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, np.cross(right, f), -f, pos
    return M


def _tan_half(opts):
    th = math.tan(math.radians(opts.fov_deg) / 2)
    return th, th * opts.height / opts.width


def _split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _flight_nadir(site, opts, rng, n):
    """Boustrophedon lines along x, looking straight down with a FIXED heading (+x is image up on every line)."""
    hx, hy = 0.85 * site.half[0], 0.85 * site.half[1]
    lines = opts.lines or max(2, round(math.sqrt(n / 3)))
    counts = _split(n, lines)
    spacing = 2 * hx / max(1, max(counts) - 1)
    alt = opts.altitude or max(spacing / ((1 - opts.overlap) * 2 * _tan_half(opts)[1]), 1.3 * site.max_h + 10)
    out = []
    for j, (y, k) in enumerate(zip(np.linspace(-hy, hy, lines), counts)):
        xs = np.linspace(-hx, hx, k) if j % 2 == 0 else np.linspace(hx, -hx, k)
        out += [(_c2w((x, y, alt), 0.0, -np.pi / 2), "nadir") for x in xs]
    return out


def _flight_oblique(site, opts, rng, n):
    """Serpentine at ONE altitude: lines along x, heading alternating forward/backward (or left/right)."""
    hx, hy = site.half
    lines = opts.lines or (3 if n >= 24 else 2)
    alt = opts.altitude or max(1.6 * site.max_h, 35.0)
    pitch = math.radians(opts.pitch_deg)
    ahead = alt / math.tan(-pitch)  # horizontal distance from the camera to the ground point it looks at
    out = []
    for j, (y, k) in enumerate(zip(np.linspace(-0.6 * hy, 0.6 * hy, lines), _split(n, lines))):
        sgn = 1 if j % 2 == 0 else -1
        xs = sgn * np.linspace(-0.8 * hx, 0.8 * hx, k)  # look points, in flight order
        for x in xs:
            if opts.heading == "along":
                out.append((_c2w((x - sgn * ahead, y, alt), 0.0 if sgn > 0 else np.pi, pitch), "oblique"))
            else:
                out.append((_c2w((x, y - sgn * ahead, alt), sgn * np.pi / 2, pitch), "oblique"))
    return out


def _flight_orbit(site, opts, rng, n):
    """One or two rings around the focus building, every camera looking at its centre."""
    fx, fy, fz = site.focus
    far = max([math.hypot(cx - fx, cy - fy) + r for cx, cy, r in site.circles] + [0.0])
    radius = max(far + 15.0, 1.2 * site.max_h)
    alts = [0.45 * site.max_h + 5, 1.1 * site.max_h] if opts.orbit_rings > 1 else [0.8 * site.max_h]
    out = []
    for ring, (alt, k) in enumerate(zip(alts, _split(n, len(alts)))):
        for a in 2 * np.pi * (np.arange(k) + 0.5 * ring) / k:
            pos = np.array([fx + radius * math.cos(a), fy + radius * math.sin(a), alt])
            f = np.array([fx, fy, fz]) - pos
            out.append((_c2w(pos, math.atan2(f[1], f[0]), math.asin(f[2] / np.linalg.norm(f))), "orbit"))
    return out


def _flight_street(site, opts, rng, n):
    """Walk at 1.7 m along the roads; views cycle along the street, left facade, diagonally down the street, right facade."""
    hx, hy = site.half
    segs = []
    for x0, y0, x1, y1, w in site.roads:  # clip each road to the built-up area
        a, b = np.array([x0, y0]), np.array([x1, y1])
        L = np.linalg.norm(b - a)
        u = (b - a) / L
        ts = np.linspace(0, L, 200)
        pts = a + ts[:, None] * u
        ok = (np.abs(pts[:, 0]) <= hx - 12) & (np.abs(pts[:, 1]) <= hy - 12)  # stay where facades line the road
        if ok.any():
            segs.append((a + ts[ok][0] * u, u, ts[ok][-1] - ts[ok][0], w))
    if not segs:
        raise ValueError(f"{opts.name}: a street flight needs a road through the built-up area; layout {opts.layout!r} has none")
    total = sum(s[2] for s in segs)
    out = []
    for i in range(n):
        s = (i + 0.5) / n * total
        for start, u, L, w in segs:
            if s <= L:
                break
            s -= L
        lateral = rng.uniform(-0.3, 0.3) * w
        pos = np.array([*(start + s * u + lateral * np.array([-u[1], u[0]])), 1.7 + rng.uniform(-0.05, 0.05)])
        view = i % 4
        inward = 1.0 if s < L / 2 else -1.0  # along-street views look towards the far end, not out of town
        heading = math.atan2(inward * u[1], inward * u[0]) + (0.0, np.pi / 2, (0.5 if i % 8 == 2 else -0.5), -np.pi / 2)[view]
        pitch = rng.uniform(-5, 5) if view % 2 == 0 else rng.uniform(2, 15)
        out.append((_c2w(pos, heading + rng.normal(0, 0.05), math.radians(pitch)), "street"))
    return out


def _flight(site, opts, rng):
    n = opts.frames
    if opts.flight == "mixed":
        return _flight_oblique(site, opts, rng, n // 2) + _flight_street(site, opts, rng, n - n // 2)
    fn = {"nadir": _flight_nadir, "oblique": _flight_oblique, "orbit": _flight_orbit, "street": _flight_street}
    if opts.flight not in fn:
        raise ValueError(f"unknown flight {opts.flight!r}; known: {', '.join(FLIGHTS)}")
    return fn[opts.flight](site, opts, rng, n)


# --------------------------------------------------------------------------- shading


def _ground_albedo(site: Site, opts, x, y, fp) -> np.ndarray:
    """Asphalt roads with lane markings, paved sidewalks, and the site's surface elsewhere."""
    dist, along, off = site.road_distance(x, y)
    n1 = _fbm(x, y, 11, 12.0, 7, fp)
    rgb = np.empty((len(x), 3), np.float32)
    road = dist < 0
    walk = ~road & (dist < 2.5)
    rest = ~road & ~walk
    # asphalt: noise, repaired patches, aggregate speckle, dashed centre line and solid edge lines
    xr, yr, fr, ar, orr = x[road], y[road], fp[road], along[road], off[road]
    g = 0.2 + 0.22 * (n1[road] - 0.5) + 0.06 * (_value_noise(xr / 3.0, yr / 3.0, 9) > 0.7)
    g = g + 0.08 * _fade(0.4, fr) * (_hash01(np.floor(xr / 0.1), np.floor(yr / 0.1), 5) - 0.5)
    half_w = np.abs(orr) - dist[road]
    dash = _lines(ar, 6.0, 3.0, fr) * _lines(orr + 0.12, 1e6, 0.24, fr)  # 0.24 m wide, 3 m on / 3 m off
    edge = _lines(np.abs(orr) - half_w + 0.6, 1e6, 0.15, fr)
    c = np.maximum(dash, edge)
    rgb[road] = ((1 - c) * g + c * 0.85)[:, None] * np.float32([1.0, 1.0, 1.04])
    # sidewalk: 0.5 m tiles with per-tile tone and dark joints
    xw, yw, fw = x[walk], y[walk], fp[walk]
    tone = 0.55 + 0.2 * (_hash01(np.floor(xw / 0.5), np.floor(yw / 0.5), 7) - 0.5) * _fade(1.0, fw) + 0.2 * (n1[walk] - 0.5)
    c = _grid(xw, yw, 0.5, 0.04, fw)
    rgb[walk] = ((1 - c) * tone + c * 0.28)[:, None] * np.float32([1.0, 0.98, 0.94])
    xr, yr, fr, nr = x[rest], y[rest], fp[rest], n1[rest]
    spots = _hash01(np.floor(xr / 2.0), np.floor(yr / 2.0), 29)  # one tuft/stone/stain per 2 m cell, some cells
    in_spot = np.hypot(_frac(xr / 2.0) - 0.5, _frac(yr / 2.0) - 0.5) < 0.22
    spot = _fade(2.0, fr) * in_spot + (1 - _fade(2.0, fr)) * 0.15
    if opts.ground == "grass":  # mown stripes, clumps, dark shrubs and light clover
        v = (0.35 + 1.3 * nr) * (1 + 0.06 * np.sign(np.sin(xr * np.pi / 4.0)) * _fade(8.0, fr))
        v = v * (0.7 + 0.6 * _fbm(xr, yr, 23, 1.0, 3, fr))
        base = np.float32([0.3, 0.5, 0.18]) * v[:, None]
        tuft = np.where((spots > 0.7)[:, None], np.float32([0.1, 0.2, 0.07]), np.float32([0.62, 0.66, 0.36]))
        w = (spot * (np.abs(spots - 0.5) > 0.3))[:, None]
        rgb[rest] = (1 - w) * base + w * tuft
    elif opts.ground == "dirt":
        v = 0.45 + 1.1 * nr + 0.3 * (_fbm(xr, yr, 37, 1.0, 3, fr) - 0.5)
        base = np.float32([0.55, 0.42, 0.3]) * v[:, None]
        w = (spot * (spots > 0.55))[:, None]
        rgb[rest] = (1 - w) * base + w * np.where((spots > 0.8)[:, None], np.float32([0.78, 0.74, 0.68]), np.float32([0.25, 0.2, 0.15]))
    else:  # plaza paving: 1.2 m slabs in two tones, grime
        tone = np.where(_hash01(np.floor(xr / 1.2), np.floor(yr / 1.2), 41) > 0.7, 0.42, 0.62)
        tone = (_fade(2.4, fr) * tone + (1 - _fade(2.4, fr)) * 0.56) * (0.6 + 0.8 * nr)
        c = _grid(xr, yr, 1.2, 0.07, fr)
        rgb[rest] = ((1 - c) * tone + c * 0.3)[:, None] * np.float32([1.0, 0.95, 0.88])
    return rgb


def _building_albedo(scene: Scene, p, nrm, pid, fp) -> np.ndarray:
    """Facades (plaster noise, floor bands, window grid) and roofs (noise, panels or tile rows)."""
    bid = scene.bid[pid]
    get = lambda k: scene.bparams[k][bid]  # noqa: E731
    wall, roof, seed = get("wall"), get("roof"), get("seed")
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rgb = np.empty((len(p), 3), np.float32)
    is_roof, under = nrm[:, 2] > 0.3, nrm[:, 2] < -0.5
    fac = ~is_roof & ~under
    # facade coordinates: u along the wall (around the axis for cylinders), v = height
    u = -x * nrm[:, 1] + y * nrm[:, 0]
    cyl = (pid >= scene.n_poly) & (pid < scene.n_poly + scene.n_cyl)
    if cyl.any():
        c = scene.bcenter[pid[cyl]]
        u[cyl] = np.arctan2(y[cyl] - c[:, 1], x[cyl] - c[:, 0]) * np.hypot(x[cyl] - c[:, 0], y[cyl] - c[:, 1])
    f = fac
    uf, vf, ff, sf = u[f], z[f], fp[f], seed[f]
    style = get("style")[f]
    tone = 0.8 + 0.9 * (_fbm(uf, vf, sf, 3.0, 5, ff) - 0.5)  # plaster: blotchy, weathered
    # brick: 0.3 m courses of 0.7 m bricks in running bond, per-brick tone, mortar joints
    row = np.floor(vf / 0.3)
    bu = uf + 0.35 * (row % 2)
    brick = (1 + 0.35 * _fade(0.6, ff) * (_hash01(np.floor(bu / 0.7), row, sf) - 0.5)) * (1 - 0.3 * (1 - (1 - _lines(vf, 0.3, 0.04, ff)) * (1 - _lines(bu, 0.7, 0.04, ff))))
    # cladding panels: 1.5 m x half a floor, per-panel tone, seams
    ph = get("floor")[f] / 2
    panel = (1 + 0.4 * _fade(3.0, ff) * (_hash01(np.floor(uf / 1.5), np.floor(vf / ph), sf + 1) - 0.5)) * (1 - 0.35 * _grid(uf, vf * 1.5 / ph, 1.5, 0.06, ff))
    tone = tone * np.where(style == 1, brick, np.where(style == 2, panel, 1.0))
    band = 1 - 0.25 * _lines(vf, get("floor")[f], 0.25, ff)
    sp, fl, wx, wy, ribbon = get("spacing")[f], get("floor")[f], get("wx")[f], get("wy")[f], get("ribbon")[f]
    cu, cv = np.floor(uf / sp), np.floor(vf / fl)
    du, dv = np.abs(_frac(uf / sp) - 0.5), np.abs(_frac(vf / fl) - 0.55)
    win = (dv < wy / 2) & ((du < wx / 2) | (ribbon > 0)) & (vf > 1.2)
    frame = win & ((dv > wy / 2 - 0.06) | ((ribbon == 0) & (du > wx / 2 - 0.06 * fl / sp)) | ((ribbon > 0) & (du < 0.03)))
    h = _hash01(cu, cv, sf)
    glass = np.where((h > 0.88)[:, None], np.float32([0.95, 0.82, 0.5]),  # a few lit windows
                     np.stack([0.12 + 0.25 * h, 0.16 + 0.25 * h, 0.22 + 0.3 * h], 1))
    glass = np.where(frame[:, None], np.float32([0.88, 0.88, 0.86]), glass)
    base = wall[f] * (tone * band)[:, None]
    a = _fade(0.5 * sp, ff)[:, None]  # far away, windows blend into the wall tone instead of aliasing
    rgb[f] = np.where(win[:, None], a * glass + (1 - a) * (0.6 * base + 0.4 * 0.2), base)
    # roofs: sloped ones get tile rows across the slope, flat ones panels and rooftop units
    r = is_roof
    yaw = scene.yaw[pid[r]]
    ru, rv = x[r] * np.cos(yaw) + y[r] * np.sin(yaw), -x[r] * np.sin(yaw) + y[r] * np.cos(yaw)
    fr, sr = fp[r], seed[r]
    noise = 0.75 + 0.5 * _fbm(ru, rv, sr + 3, 4.0, 5, fr)
    sloped = nrm[r, 2] < 0.95
    tiles = np.where(sloped, _lines(rv, 0.4, 0.08, fr), _grid(ru, rv, 2.5, 0.12, fr))
    unit = ~sloped & (_hash01(np.floor(ru / 4), np.floor(rv / 4), sr) > 0.75) & (np.maximum(np.abs(_frac(ru / 4) - 0.5), np.abs(_frac(rv / 4) - 0.5)) < 0.18)
    val = noise * (1 - 0.35 * tiles)
    rgb[r] = np.where(unit[:, None], np.float32([0.78, 0.78, 0.8]), roof[r] * val[:, None])
    rgb[under] = roof[under] * 0.5
    return rgb


def _albedo(site: Site, opts, p, nrm, pid, fp) -> np.ndarray:
    sc = site.scene
    rgb = np.zeros((len(p), 3), np.float32)
    g = pid == -2
    if g.any():
        rgb[g] = _ground_albedo(site, opts, p[g, 0], p[g, 1], fp[g])
    obj = pid >= 0
    mat = np.where(obj, sc.mat[np.maximum(pid, 0)], 0) if len(sc.mat) else np.zeros(len(p), int)
    b = obj & (mat == 1)
    if b.any():
        rgb[b] = _building_albedo(sc, p[b], nrm[b], pid[b], fp[b])
    t = obj & (mat == 2)  # trunks: bark stripes
    if t.any():
        v = 0.7 + 0.6 * (_value_noise(np.arctan2(p[t, 1], p[t, 0]) * 8, p[t, 2] * 3, 3) - 0.5)
        rgb[t] = np.float32([0.36, 0.26, 0.18]) * v[:, None]
    leaf = obj & (mat == 3)  # foliage: clumpy 3D-ish noise
    if leaf.any():
        q = p[leaf]
        v = _fbm(q[:, 0] + 0.7 * q[:, 2], q[:, 1] - 0.7 * q[:, 2], 5, 1.5, 4, fp[leaf])
        rgb[leaf] = np.float32([0.2, 0.38, 0.14]) * (0.4 + 1.3 * v)[:, None]
    return rgb


def _sky(d, sky: dict, sun: np.ndarray) -> np.ndarray:
    """Vertical gradient, a glow around the sun and the sun disc."""
    t = np.sqrt(np.clip(d[:, 2], 0, 1))[:, None]
    col = np.float32(sky["horizon"]) * (1 - t) + np.float32(sky["zenith"]) * t
    col = np.where(d[:, 2:3] < 0, np.float32(sky["horizon"]) * 0.85, col)  # below the horizon, past the ground's edge
    cosang = d @ sun
    col = col + np.float32(sky["sun"]) * (0.35 * np.exp((cosang - 1) * 40))[:, None]
    return np.where((cosang > math.cos(math.radians(1.5)))[:, None], np.float32([1.0, 1.0, 0.97]), col)


def _sun_dir(sky: dict) -> np.ndarray:
    az, el = math.radians(sky["az"]), math.radians(sky["el"])
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)


def _exposure(sky: dict) -> float:
    """Fixed per-preset exposure (like a camera's auto exposure) so that low-sun presets are not murky."""
    lit = sky["ambient"] + (1 - sky["ambient"]) * 1.15 * max(math.sin(math.radians(sky["el"])), 0.35)
    return float(np.clip(1 / lit, 0.9, 1.5))


def _render(site: Site, opts, c2w: np.ndarray, cam_dirs: np.ndarray, pix_angle: float):
    """One frame: RGB float [H*W, 3], hit points [H*W, 3] (local), hit mask."""
    sky = SKIES[opts.sky]
    sun = _sun_dir(sky)
    d = cam_dirs @ c2w[:3, :3].T.astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = c2w[None, :3, 3].astype(np.float32)
    t, nrm, pid = site.scene.trace(o, d)
    hit = np.isfinite(t)
    p = o + d * np.where(hit, t, 0)[:, None]
    rgb = _sky(d, sky, sun)
    if hit.any():
        ph, nh, dh = p[hit], nrm[hit], d[hit]
        nh = np.where(((nh * dh).sum(1) > 0)[:, None], -nh, nh)  # face the camera
        cos_in = np.abs((nh * dh).sum(1))
        fp = t[hit] * pix_angle / np.maximum(cos_in, 0.25)  # pixel footprint on the surface (metres)
        alb = _albedo(site, opts, ph, nh, pid[hit], fp)
        ndl = np.clip(nh @ sun, 0, 1)
        lit = ndl > 0
        if opts.shadows and lit.any():
            ts, _, _ = site.scene.trace(ph[lit] + nh[lit] * 0.02, sun[None], ground=False)
            shadow = np.ones(len(ph), np.float32)
            shadow[lit] = np.where(np.isfinite(ts), 0.0, 1.0)
            ndl = ndl * shadow
        amb = sky["ambient"] * np.float32(sky["tint"]) * (0.8 + 0.2 * nh[:, 2:3])
        light = amb + (1 - sky["ambient"]) * 1.15 * np.float32(sky["sun"]) * ndl[:, None]
        rgb[hit] = alb * light * _exposure(sky)
    return np.clip(rgb, 0, 1), p, hit


# --------------------------------------------------------------------------- global transform and output


def _rng(seed: int, *tags) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(t).encode()) for t in tags])


def world_rotation(spec: str, rng) -> np.ndarray:
    """R of p' = s R p + t: identity, a seeded random rotation, z-down (180 deg about x) or y-up."""
    if spec == "none":
        return np.eye(3)
    if spec == "zdown":
        return np.diag([1.0, -1.0, -1.0])
    if spec == "yup":
        return np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    if spec == "random":
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        return q if np.linalg.det(q) > 0 else q * np.array([-1.0, 1.0, 1.0])
    raise ValueError(f"unknown rotation {spec!r}; known: {', '.join(ROTATIONS)}")


def resolve_options(preset: Union[str, SceneOptions], width=None, height=None, frames=None) -> SceneOptions:
    """A zoo preset by name (or given options) with size overrides applied and every knob checked."""
    if isinstance(preset, SceneOptions):
        opts = preset
    elif preset in ZOO:
        opts = ZOO[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(ZOO)}")
    opts = replace(opts, **{k: v for k, v in dict(width=width, height=height, frames=frames).items() if v is not None})
    checks = [(opts.layout in LAYOUTS, f"layout {opts.layout!r} (known: {', '.join(LAYOUTS)})"),
              (opts.flight in FLIGHTS, f"flight {opts.flight!r} (known: {', '.join(FLIGHTS)})"),
              (opts.rotation in ROTATIONS, f"rotation {opts.rotation!r} (known: {', '.join(ROTATIONS)})"),
              (opts.ground in GROUNDS, f"ground {opts.ground!r} (known: {', '.join(GROUNDS)})"),
              (opts.sky in SKIES, f"sky {opts.sky!r} (known: {', '.join(SKIES)})"),
              (all(k in KINDS for k in opts.kinds) and len(opts.kinds) > 0, f"kinds {opts.kinds!r} (known: {', '.join(KINDS)})"),
              (opts.heading in ("along", "across"), f"heading {opts.heading!r} (along or across)"),
              (opts.frames >= 2 and opts.width >= 8 and opts.height >= 8, "frames >= 2 and width, height >= 8"),
              (opts.scale > 0 and 10 < opts.fov_deg < 150, "scale > 0 and 10 < fov_deg < 150"),
              (-89.9 <= opts.pitch_deg <= -5, "pitch_deg in [-89.9, -5]")]
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ValueError(f"invalid scene options for {opts.name!r}: " + "; ".join(bad))
    return opts


@dataclass
class Capture:
    """A built scene with its cameras and the global transform (for generate_scene and for tests)."""

    opts: SceneOptions
    seed: int
    site: Site
    cams: List[Tuple[np.ndarray, str]]  # local c2w, kind
    R: np.ndarray
    s: float
    t: np.ndarray

    def to_world(self, p):
        return self.s * np.asarray(p, np.float64) @ self.R.T + self.t

    def c2w_world(self, c2w):
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = self.R @ c2w[:3, :3], self.to_world(c2w[:3, 3])
        return M

    def cast_world(self, origins, dirs):
        """Cast rays given in the transformed world frame; hit points in that frame (NaN where the ray sees sky)."""
        o = (np.atleast_2d(origins) - self.t) @ self.R / self.s
        d = np.atleast_2d(dirs) @ self.R
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        t, _, _ = self.site.scene.trace(o, d)
        p = self.to_world(o + d * np.where(np.isfinite(t), t, np.nan)[:, None])
        return p

    def bbox_world(self) -> np.ndarray:
        pts = self.to_world(np.concatenate(self.site.scene.extent_points))
        return np.stack([pts.min(0), pts.max(0)])


def build_capture(preset: Union[str, SceneOptions], seed: int = 0, **overrides) -> Capture:
    """Lay out the scene and its cameras without rendering anything."""
    opts = resolve_options(preset, **overrides)
    site = _layout(opts, _rng(seed, "layout", opts.name, opts.layout))
    cams = _flight(site, opts, _rng(seed, "flight", opts.name))
    inside = site.scene.inside(np.array([c[:3, 3] for c, _ in cams]))
    if inside.any():  # a camera inside a building would see nothing useful: a generator bug, not a capture
        raise RuntimeError(f"{opts.name}: {int(inside.sum())} cameras inside geometry")
    R = world_rotation(opts.rotation, _rng(seed, "rotation"))
    return Capture(opts, seed, site, cams, R, float(opts.scale), np.asarray(opts.translation, np.float64))


def _write_npz(path: Path, **arrays):
    """np.savez stamps the current time into the zip; write fixed timestamps so output bytes are reproducible."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(v))
            zf.writestr(zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(), zipfile.ZIP_DEFLATED)


OUR_FILES = ("transforms.json", "sparse_pc.ply", "README.md", "gt/visible_points.npz", "gt/scene.json")


def _prepare_out(out: Path, overwrite: bool):
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; pass overwrite=True (--overwrite) to replace it")
        for f in OUR_FILES:  # remove only what this tool writes
            (out / f).unlink(missing_ok=True)
        for f in (out / "images").glob("frame_*.png"):
            f.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(exist_ok=True)


def generate_scene(out: Path, preset: Union[str, SceneOptions], seed: int = 0, width: Optional[int] = None, height: Optional[int] = None,
                   frames: Optional[int] = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Render one capture into `out` (see the module docstring for the files). Same preset + seed -> identical bytes."""
    out = Path(out)
    cap = build_capture(preset, seed, width=width, height=height, frames=frames)
    opts, site = cap.opts, cap.site
    _prepare_out(out, overwrite)
    W, H = opts.width, opts.height
    fl = (W / 2) / math.tan(math.radians(opts.fov_deg) / 2)
    cx, cy = W / 2, H / 2
    jj, ii = np.mgrid[0:H, 0:W]
    cam_dirs = np.stack([(ii + 0.5 - cx) / fl, -(jj + 0.5 - cy) / fl, -np.ones_like(ii, float)], -1).reshape(-1, 3).astype(np.float32)
    n = len(cap.cams)
    per = min(opts.gt_per_frame, max(1, opts.gt_total // n), H * W)
    rng_gt = _rng(seed, "gt")
    gt_p, gt_f, gt_c, frames_json = [], [], [], []
    t0 = time.time()
    for i, (c2w, kind) in enumerate(cap.cams):
        rgb, p, hit = _render(site, opts, c2w, cam_dirs, 1.0 / fl)
        img = np.round(rgb * 255).astype(np.uint8).reshape(H, W, 3)
        cv2.imwrite(str(out / "images" / f"frame_{i:05d}.png"), img[..., ::-1])
        sel = np.sort(rng_gt.choice(H * W, per, replace=False)) if per < H * W else np.arange(H * W)
        sel = sel[hit[sel]]
        gt_p.append(p[sel])
        gt_c.append(img.reshape(-1, 3)[sel])
        gt_f.append(np.full(len(sel), i, np.int32))
        frames_json.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": cap.c2w_world(c2w).tolist()})
        if progress:
            print(f"\r{opts.name}: frame {i + 1}/{n} ({time.time() - t0:.1f} s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    points = cap.to_world(np.concatenate(gt_p)).astype(np.float32)
    _write_npz(out / "gt" / "visible_points.npz", points=points, frame=np.concatenate(gt_f).astype(np.int32))
    meta = {"camera_model": "OPENCV", "fl_x": fl, "fl_y": fl, "cx": cx, "cy": cy, "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames_json}
    if opts.points:  # the sparse cloud an SfM run would give: visible surface points with their colours
        pick = np.sort(_rng(seed, "points").choice(len(points), min(opts.n_points, len(points)), replace=False))
        write_ply(out / "sparse_pc.ply", points[pick], np.concatenate(gt_c)[pick])
        meta["ply_file_path"] = "sparse_pc.ply"
    (out / "transforms.json").write_text(json.dumps(meta, indent=2))
    bbox = cap.bbox_world()
    scene_json = {"generator": "mclnf_city.scenes.zoo", "preset": opts.name, "seed": seed, "options": asdict(opts),
                  "scale": cap.s, "rotation": cap.R.tolist(), "translation": cap.t.tolist(),
                  "bbox": {"min": bbox[0].tolist(), "max": bbox[1].tolist()},
                  "bbox_local": {"min": site.scene.bbox()[0].tolist(), "max": site.scene.bbox()[1].tolist()},
                  "ground_half_extent_local": list(site.scene.ground_half), "max_building_height_local": site.max_h,
                  "sun_direction_world": (cap.R @ _sun_dir(SKIES[opts.sky])).tolist(),
                  "camera_kinds": [k for _, k in cap.cams], "num_buildings": len(site.scene.buildings)}
    (out / "gt" / "scene.json").write_text(json.dumps(scene_json, indent=2))
    (out / "README.md").write_text(
        f"# {opts.name}\n\n{opts.description}\n\nMade with:\n\n"
        f"    python -m mclnf_city.scenes.zoo --preset {opts.name} --out <this directory> --seed {seed} "
        f"--width {W} --height {H} --frames {opts.frames}\n\n"
        f"{n} frames ({', '.join(sorted(set(scene_json['camera_kinds'])))}), {W}x{H}, layout {opts.layout}, "
        f"scale {opts.scale:g}, rotation {opts.rotation}, sparse points: {'yes' if opts.points else 'no'}.\n"
        "Ground truth: gt/visible_points.npz (points seen by each frame, world frame), gt/scene.json.\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mclnf-scene-zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="zoo preset name (see --list)")
    p.add_argument("--out", type=Path, help="output capture directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, help="image width (default: the preset's, 160)")
    p.add_argument("--height", type=int, help="image height (default: the preset's, 120)")
    p.add_argument("--frames", type=int, help="number of frames (default: the preset's, 48)")
    p.add_argument("--overwrite", action="store_true", help="replace this tool's files in a non-empty --out")
    p.add_argument("--list", action="store_true", help="list the zoo presets and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, o in ZOO.items():
            print(f"{name:24s} {o.description}")
        return 0
    if not args.preset or not args.out:
        p.error("--preset and --out are required (or --list)")
    try:
        t0 = time.time()
        out = generate_scene(args.out, args.preset, args.seed, args.width, args.height, args.frames, args.overwrite, progress=True)
    except (ValueError, FileExistsError) as e:
        print(f"mclnf-scene-zoo: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

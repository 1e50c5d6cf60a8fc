"""Ray casting against the city: nearest hits of camera rays, and sun shadows."""

from __future__ import annotations

import math
from typing import Dict

import numpy as np

from mclnf_city.scenes.layout import City


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


def in_shadow(city: City, p: np.ndarray) -> np.ndarray:
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

"""Rendering a frame: shading of the hits (sun, shadows, ambient occlusion), anti-aliasing, depth and points."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from mclnf_city.scenes.flight import Frame, camera_rays
from mclnf_city.scenes.layout import City
from mclnf_city.scenes.raycast import in_shadow, intersect
from mclnf_city.scenes.textures import facade_albedo, ground_albedo, roof_albedo, sky_colour


def shade_hits(city: City, p: np.ndarray, d: np.ndarray, kind: np.ndarray, box: np.ndarray,
               axis: np.ndarray) -> np.ndarray:
    """Colour of flat arrays of hits (kind 0 = sky).  View-independent except the sky."""
    n = len(d)
    col = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    m = kind == 0
    col[m] = sky_colour(city, d[m])
    m = kind == 1
    col[m] = ground_albedo(city, p[m, 0], p[m, 1])
    normal[m] = (0.0, 0.0, 1.0)
    m = (kind == 2) & (axis == 2)
    col[m] = roof_albedo(city, box[m], p[m, 0], p[m, 1])
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
        col[m] = facade_albedo(city, b, u, p[m, 2], width, face)
        normal[m, ax] = sgn
    lit = kind > 0
    ndl = np.clip(normal @ city.sun, 0.0, 1.0)
    if city.options.shadows:
        cand = lit & (ndl > 0)
        sh = np.zeros(n, dtype=bool)
        sh[cand] = in_shadow(city, p[cand] + normal[cand] * 1e-4)
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

"""Procedural albedo of the city's surfaces (streets, sidewalks, yards, fields, facades, roofs) and the sky."""

from __future__ import annotations

import math

import numpy as np

from mclnf_city.scenes.layout import City
from mclnf_city.scenes.noise import fbm, frac, hash01, mix, vnoise
from mclnf_city.scenes.options import YARD_TYPES


def sky_colour(city: City, d: np.ndarray) -> np.ndarray:
    st = city.style
    zen, hor = np.array(st["zenith"]), np.array(st["horizon"])
    e = d[:, 2]
    t = np.clip(e, 0.0, 1.0) ** 0.55
    col = hor + (zen - hor) * t[:, None]
    # Below the horizon (beyond the ground quad): distant hazy land.
    haze = hor * 0.85 + np.array([-0.08, -0.02, -0.10])
    col = np.where((e < 0)[:, None], mix(hor, haze, np.clip(-e * 6.0, 0, 1)[:, None]), col)
    c = d @ city.sun
    col = col + 0.35 * np.exp((c - 1.0) * 60.0)[:, None] * np.array([1.0, 0.95, 0.8])
    col = np.where((c > math.cos(math.radians(1.8)))[:, None], np.array([1.0, 0.98, 0.92]), col)
    return col


def ground_albedo(city: City, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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
    grain = vnoise(x * 3.1, y * 3.1, salt + 7) - 0.5
    blotch = fbm(x, y, salt + 11, 0.08, 3) - 0.5

    # Countryside: patchwork of fields with crop rows.
    m = ~in_city
    if m.any():
        fxy = np.floor(x[m] / 31.0), np.floor(y[m] / 23.0)
        h = hash01(fxy[0].astype(np.int64), fxy[1].astype(np.int64), salt + 13)
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
            centre = (np.abs(r_across - S / 2) < 0.13) & (frac(pos / 6.0) < 0.5) & ~near_end
            edge = ((np.abs(r_across - 1.0) < 0.1) | (np.abs(r_across - (S - 1.0)) < 0.1)) & ~near_end
            zebra = (((b_along > 0.8) & (b_along < 3.4)) | ((b_along < B - 0.8) & (b_along > B - 3.4))) \
                & (frac(r_across / 1.1) < 0.5) & (r_across > 1.0) & (r_across < S - 1.0)
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
            tile = hash01(np.floor(xs / 1.5).astype(np.int64), np.floor(ys / 1.5).astype(np.int64), salt + 17)
            joint = (frac(xs / 1.5) < 0.06) | (frac(ys / 1.5) < 0.06)
            v = 0.66 + 0.06 * (tile - 0.5) + 0.15 * blotch[m][side] + 0.1 * grain[m][side] - 0.15 * joint
            v = np.where(edge_d[side] < 0.3, 0.80, v)  # kerb
            c[side] = v[:, None] * np.array([1.0, 0.99, 0.96])
        yard_t = city.yard[ci[m].astype(np.int64).clip(0, o.blocks_x - 1), cj[m].astype(np.int64).clip(0, o.blocks_y - 1)]
        for yi, name in enumerate(YARD_TYPES):
            sel = ~side & (yard_t == yi)
            if not sel.any():
                continue
            xs, ys = x[m][sel], y[m][sel]
            g, b = grain[m][sel], blotch[m][sel]
            if name == "grass":
                dark = fbm(xs, ys, salt + 19, 0.25, 2) > 0.62  # shrubs / tree clumps
                v = 0.9 + 0.6 * b + 0.3 * g
                c[sel] = np.where(dark[:, None], np.array([0.12, 0.26, 0.10]) * (0.9 + 0.4 * g[:, None]),
                                  np.array([0.30, 0.48, 0.19]) * v[:, None])
            elif name == "plaza":
                ix, iy = np.floor(xs / 2.0).astype(np.int64), np.floor(ys / 2.0).astype(np.int64)
                h = hash01(ix, iy, salt + 23)
                stone = np.where((h > 0.5)[:, None], np.array([0.78, 0.70, 0.58]), np.array([0.66, 0.56, 0.48]))
                joint = (frac(xs / 2.0) < 0.05) | (frac(ys / 2.0) < 0.05)
                v = (0.9 + 0.15 * h + 0.3 * b + 0.15 * g) * np.where(joint, 0.75, 1.0)
                c[sel] = stone * v[:, None]
            else:  # parking
                v = st["asphalt"] * (1.05 + 0.3 * b + 0.25 * g)
                lx = frac(xs / 2.6) < 0.06
                row = frac(ys / 12.0)
                lines = lx & (row > 0.1) & (row < 0.45) | (np.abs(row - 0.5) < 0.01)
                c[sel] = np.where(lines[:, None], white, v[:, None])
        col[m] = c
    return np.clip(col, 0.0, 1.0)


def facade_albedo(city: City, bid: np.ndarray, u: np.ndarray, z: np.ndarray, width: np.ndarray,
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

    wn = fbm(u, z, int(salt[0]) if salt.size else 0, 0.35, 2)
    grain = vnoise(u * 2.7, z * 2.7, city.salt + 41) - 0.5
    c = wall * (0.82 + 0.3 * wn + 0.12 * grain)[:, None]
    c = np.where(slab[:, None], c * 0.8, c)
    c = np.where(cornice[:, None], c * 0.72 + 0.05, c)
    c = np.where(plinth[:, None], c * 0.6, c)
    hw = hash01(colf.astype(np.int64) + 977 * face, rowf.astype(np.int64), city.salt + 53)
    hb = hash01(city.bsalt[bid].astype(np.int64), face.astype(np.int64), city.salt + 59)
    wc = glass * (0.75 + 0.6 * hw)[:, None] + 0.08 * hb[:, None]
    wc = np.where((hw > 0.93)[:, None], np.array([0.85, 0.78, 0.55]), wc)  # curtains / lit rooms
    c = np.where(frame[:, None], 0.85 * np.maximum(wall, 0.7), c)
    c = np.where(win[:, None], wc, c)
    shopc = np.where(shop[:, None], np.array([0.20, 0.26, 0.30]) + 0.25 * hw[:, None], glass * 0.9)
    c = np.where(gwin[:, None], shopc, c)
    return np.clip(c, 0.0, 1.0)


def roof_albedo(city: City, bid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Roof albedo: gravel noise, parapet rim, rooftop units / panels."""
    salt = city.salt + 67
    mn, mx = city.bmin[bid], city.bmax[bid]
    rim = np.minimum(np.minimum(x - mn[:, 0], mx[:, 0] - x), np.minimum(y - mn[:, 1], mx[:, 1] - y)) < 0.5
    v = 0.85 + 0.35 * (fbm(x, y, salt, 0.3, 2) - 0.5) + 0.2 * (vnoise(x * 3.3, y * 3.3, salt + 1) - 0.5)
    c = city.roof[bid] * v[:, None]
    ix, iy = np.floor(x / 4.0), np.floor(y / 4.0)
    h = hash01(ix.astype(np.int64), iy.astype(np.int64), salt + 2)
    fx, fy = frac(x / 4.0), frac(y / 4.0)
    unit = (h > 0.82) & (np.abs(fx - 0.5) < 0.3) & (np.abs(fy - 0.5) < 0.25)
    panel = (h < 0.08) & (np.abs(fx - 0.5) < 0.42) & (np.abs(fy - 0.5) < 0.4)
    c = np.where(unit[:, None], np.array([0.62, 0.63, 0.64]) * (0.8 + 0.3 * h[:, None]), c)
    c = np.where(panel[:, None], np.array([0.10, 0.14, 0.26]) + 0.05 * (frac(x * 1.5) < 0.1)[:, None], c)
    c = np.where(rim[:, None], city.wall[bid] * 0.9, c)
    return np.clip(c, 0.0, 1.0)

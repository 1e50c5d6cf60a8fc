"""How well a capture's cameras see each block of the city (for the summary and gt/city.json)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from mclnf_city.scenes.flight import Frame, intrinsics
from mclnf_city.scenes.layout import City
from mclnf_city.scenes.raycast import intersect


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

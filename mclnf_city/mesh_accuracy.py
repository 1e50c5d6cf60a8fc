"""A mesh against a ground-truth mesh, both cut to a box (e.g. the city box, the region the model reconstructs).

- Chamfer distance: mean of the two mean nearest-neighbour distances (metres), between
  points sampled uniformly by area on each surface;
- precision / recall / F-score at a tolerance tau: the fraction of the mesh's points
  within tau of the ground truth, of ground-truth points within tau of the mesh, and their
  harmonic mean.

Broken meshes (`shifted`, `random_mesh`) and the flat ground alone (`ground_plane`) are the
controls a good score must beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np


def read_mesh(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] float64 and triangles [F, 3] of a PLY mesh."""
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = ply["vertex"]
    vertices = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    faces = np.stack(ply["face"]["vertex_indices"]).astype(np.int64) if ply["face"].count else np.zeros((0, 3), np.int64)
    return vertices, faces


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n points uniformly distributed by area on the triangles."""
    rng = np.random.default_rng(seed)
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1  # reflect into the triangle
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a[tri] + u[:, None] * (b[tri] - a[tri]) + v[:, None] * (c[tri] - a[tri])


def crop_faces(vertices: np.ndarray, faces: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cut triangles to an axis-aligned box: inside ones kept, outside ones dropped, the ones
    crossing a side clipped exactly (Sutherland-Hodgman on the six planes, then fanned)."""
    corners = vertices[faces]  # [F, 3, 3]
    inside = np.all((corners >= lo) & (corners <= hi), axis=(1, 2))
    outside = np.any(np.all(corners < lo, axis=1) | np.all(corners > hi, axis=1), axis=1)
    polys = [c for c in corners[~inside & ~outside]]
    for axis in range(3):
        for bound, keep_below in ((lo[axis], False), (hi[axis], True)):
            clipped = []
            for poly in polys:
                d = (bound - poly[:, axis]) if keep_below else (poly[:, axis] - bound)
                out = []
                for i in range(len(poly)):
                    p, q, dp, dq = poly[i], poly[(i + 1) % len(poly)], d[i], d[(i + 1) % len(poly)]
                    if dp >= 0:
                        out.append(p)
                    if (dp >= 0) != (dq >= 0):
                        out.append(p + (q - p) * (dp / (dp - dq)))
                if len(out) >= 3:
                    clipped.append(np.array(out))
            polys = clipped
    tris = [corners[inside]]
    for poly in polys:  # fan triangulation of the convex clipped polygons
        tris.append(np.stack([np.stack([poly[0], poly[i], poly[i + 1]]) for i in range(1, len(poly) - 1)]))
    tris = np.concatenate(tris)
    return tris.reshape(-1, 3), np.arange(len(tris) * 3).reshape(-1, 3)


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, tau: float) -> Dict[str, float]:
    """Chamfer distance and precision / recall / F-score at tolerance tau between point sets."""
    from scipy.spatial import cKDTree

    d_pred = cKDTree(gt).query(pred, workers=1)[0]  # accuracy: export -> ground truth
    d_gt = cKDTree(pred).query(gt, workers=1)[0]  # completeness: ground truth -> export
    precision, recall = float(np.mean(d_pred < tau)), float(np.mean(d_gt < tau))
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "chamfer": float(0.5 * (d_pred.mean() + d_gt.mean())),
        "accuracy_mean": float(d_pred.mean()),
        "completeness_mean": float(d_gt.mean()),
        "precision": precision,
        "recall": recall,
        "fscore": f,
        "tau": tau,
    }


def compare_meshes(pred_v, pred_f, gt_v, gt_f, box_lo, box_hi, tau: float, n: int = 200_000, seed: int = 0,
                   above: Optional[float] = None) -> Dict:
    """Chamfer / F-score of two meshes, both cut to the box [box_lo, box_hi].

    With `above` (a height), also the same metrics on the points above it only
    ("above_ground"): the ground fills most of a city box, so a flat plane alone scores well
    on the whole box; above the ground only buildings count.
    """
    empty = {"chamfer": float("inf"), "precision": 0.0, "recall": 0.0, "fscore": 0.0, "tau": tau}
    pv, pf = crop_faces(pred_v, pred_f, box_lo, box_hi)
    gv, gf = crop_faces(gt_v, gt_f, box_lo, box_hi)
    if len(pf) == 0:
        return dict(empty, above_ground=dict(empty)) if above is not None else empty
    pred, gt = sample_surface(pv, pf, n, seed), sample_surface(gv, gf, n, seed + 1)
    result = chamfer_fscore(pred, gt, tau)
    if above is not None:
        pred_up, gt_up = pred[pred[:, 2] > above], gt[gt[:, 2] > above]
        result["above_ground"] = chamfer_fscore(pred_up, gt_up, tau) if len(pred_up) and len(gt_up) else dict(empty)
        result["above_ground"]["height"] = above
    return result


def shifted(vertices: np.ndarray, dx: float) -> np.ndarray:
    """A broken export for the controls: the same mesh moved by dx along x."""
    return vertices + np.array([dx, 0.0, 0.0])


def random_mesh(lo: np.ndarray, hi: np.ndarray, num_faces: int, size: float, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A broken export for the controls: random triangles of edge ~size scattered in the box."""
    rng = np.random.default_rng(seed)
    centres = lo + rng.random((num_faces, 3)) * (hi - lo)
    vertices = (centres[:, None, :] + rng.normal(scale=size, size=(num_faces, 3, 3))).reshape(-1, 3)
    return vertices, np.arange(3 * num_faces).reshape(-1, 3)


def ground_plane(lo: np.ndarray, hi: np.ndarray, z: float) -> Tuple[np.ndarray, np.ndarray]:
    """Two triangles covering the box's footprint at height z."""
    v = np.array([[lo[0], lo[1], z], [hi[0], lo[1], z], [hi[0], hi[1], z], [lo[0], hi[1], z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])

"""A cheap depth probe: scene points triangulated from the images and their known poses.

A capture without sparse points (a plain transforms.json from Polycam, Record3D, a
simulator, ...) tells where the cameras are, not where the scene is. For a survey whose
principal rays are near parallel (a drone at one altitude) the cameras alone cannot
place the ground. The probe matches SIFT features between neighbouring views of a
subset of the training images (OpenCV), keeps matches that agree with the known
epipolar geometry, and triangulates them. The points only bound the scene (partition
heights and extent): a few wrong ones do no harm, since the partition takes quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class ProbeResult:
    points: Tensor
    """[M, 3] triangulated points, float64, in the cameras' frame."""
    view_depths: Tensor
    """[N] how far each camera sees: the 90th percentile of the distances to the points it
    triangulated (NaN for cameras the probe did not use or that triangulated fewer than 5)."""
    images: int
    """Images whose features were extracted."""
    pairs: int
    """Image pairs matched."""

    def summary(self) -> str:
        return f"{len(self.points):,} points triangulated from {self.pairs} image pairs of {self.images} images"


def _gray(path: Path, width: int, height: int, max_side: int, min_side: int = 384) -> tuple:
    """Grayscale image at the camera's size, resized to between `min_side` and `max_side` pixels (and the factor)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        from mclnf_city.capture import CaptureError

        raise CaptureError(f"{path}: cannot read image")
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    # Small images are enlarged: SIFT finds few features below a few hundred pixels.
    s = min(max_side / max(width, height), max(1.0, min_side / max(width, height)))
    if s != 1.0:
        inter = cv2.INTER_AREA if s < 1.0 else cv2.INTER_CUBIC
        img = cv2.resize(img, (round(width * s), round(height * s)), interpolation=inter)
    return img, s


def _normalized(keypoints, scale: float, K: np.ndarray, dist: Optional[np.ndarray]) -> np.ndarray:
    """[K, 2] pixel keypoints of the shrunk image -> normalized camera coordinates (undistorted)."""
    import cv2

    px = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 1, 2) / scale
    if len(px) == 0:
        return np.zeros((0, 2))
    return cv2.undistortPoints(px, K, dist).reshape(-1, 2)


def guided_matches(xi: np.ndarray, xj: np.ndarray, di: np.ndarray, dj: np.ndarray, E: np.ndarray, max_error: float, ratio: float = 0.8):
    """Mutual nearest descriptors among the features that fit the epipolar geometry.

    xi, xj: normalized coordinates; di, dj: descriptors; E: essential matrix (xj^T E xi = 0);
    max_error: Sampson distance limit in normalized units. Returns index arrays (into i, into j).
    """
    ah, bh = np.c_[xi, np.ones(len(xi))], np.c_[xj, np.ones(len(xj))]
    Ea, Etb = ah @ E.T, bh @ E  # [Ni, 3], [Nj, 3]
    num = bh @ Ea.T  # [Nj, Ni]
    den = (Ea[:, 0] ** 2 + Ea[:, 1] ** 2)[None, :] + (Etb[:, 0] ** 2 + Etb[:, 1] ** 2)[:, None]
    fits = num**2 < max_error**2 * den
    da = (di.astype(np.float32) ** 2).sum(1)
    db = (dj.astype(np.float32) ** 2).sum(1)
    dist = np.sqrt(np.maximum(db[:, None] + da[None, :] - 2.0 * (dj.astype(np.float32) @ di.astype(np.float32).T), 0.0))
    dist = np.where(fits, dist, np.inf)  # [Nj, Ni]
    if dist.shape[0] < 2 or dist.shape[1] < 2:
        return np.zeros(0, int), np.zeros(0, int)
    two = np.partition(dist, 1, axis=0)[:2]  # best and second best j for each i
    best_j = dist.argmin(0)
    ok = np.isfinite(two[0]) & (two[0] < ratio * two[1])
    mutual = dist.argmin(1)[best_j] == np.arange(dist.shape[1])
    qi = np.nonzero(ok & mutual)[0]
    return qi, best_j[qi]


def select_pairs(camera_to_worlds: Tensor, chosen: Sequence[int], neighbours: int, max_angle_deg: float = 60.0) -> List[tuple]:
    """Pairs (i, j) of chosen cameras: each with its nearest chosen cameras that look the same way."""
    c2w = camera_to_worlds.double()
    idx = torch.as_tensor(list(chosen))
    centres, forward = c2w[idx, :3, 3], -c2w[idx, :3, 2]
    dist = torch.cdist(centres, centres)
    same_way = (forward @ forward.T) > math.cos(math.radians(max_angle_deg))
    dist = torch.where(same_way & (dist > 0), dist, torch.full_like(dist, math.inf))
    pairs = set()
    for a in range(len(idx)):
        order = torch.argsort(dist[a])[:neighbours]
        for b in order.tolist():
            if math.isfinite(dist[a, b].item()):
                pairs.add((min(a, b), max(a, b)))
    return [(int(idx[a]), int(idx[b])) for a, b in sorted(pairs)]


def triangulate_capture(
    camera_to_worlds: Tensor,
    intrinsics: Tensor,
    sizes: Tensor,
    image_paths: Sequence[Path],
    distortion: Optional[Tensor] = None,
    max_images: int = 96,
    neighbours: int = 6,
    max_side: int = 640,
    max_error_px: float = 2.0,
    min_angle_deg: float = 1.0,
    max_depth_spread: float = 0.05,
    min_views: int = 3,
) -> ProbeResult:
    """Triangulate SIFT matches between neighbouring views with their known poses.

    Args:
        camera_to_worlds: [N, 3, 4] OpenGL convention (x right, y up, z back).
        intrinsics: [N, 4] fx, fy, cx, cy in pixels of the image at `sizes`.
        sizes: [N, 2] width, height.
        image_paths: the N images.
        distortion: [N, 6] nerfstudio's OPENCV parameters (k1, k2, k3, k4, p1, p2), or None.
        max_images: images used (evenly spread over the capture order).
        neighbours: pairs per image (its nearest cameras that look the same way).
        max_side: images are shrunk to this many pixels on their longer side.
        max_error_px: largest epipolar and reprojection error kept, in probe pixels.
        min_angle_deg: smallest triangulation angle kept (smaller gives unreliable depth).
        max_depth_spread: triangulations of a keypoint agree when their depths differ by less than
            this fraction.
        min_views: a keypoint is kept when it agrees with this many views in all (itself included).
    """
    import cv2

    n = len(camera_to_worlds)
    chosen = sorted(set(np.linspace(0, n - 1, min(n, max_images)).round().astype(int).tolist()))
    pairs = select_pairs(camera_to_worlds, chosen, neighbours)
    sift = cv2.SIFT_create(nfeatures=1500)
    c2w = camera_to_worlds.double().numpy()
    features = {}
    for i in sorted({i for p in pairs for i in p}):
        w, h = (int(v) for v in sizes[i].tolist())
        fx, fy, cx, cy = intrinsics[i].tolist()
        img, s = _gray(Path(image_paths[i]), w, h, max_side)
        kps, desc = sift.detectAndCompute(img, None)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        d = None
        if distortion is not None:
            k1, k2, k3, _, p1, p2 = distortion[i].tolist()
            d = np.array([k1, k2, p1, p2, k3])
        # OpenCV camera (x right, y down, z forward) from the OpenGL pose
        r_c2w = c2w[i, :3, :3] @ np.diag([1.0, -1.0, -1.0])
        features[i] = (_normalized(kps, s, K, d), desc, r_c2w, c2w[i, :3, 3], fx * s)
    # Every triangulation is filed under both of its keypoints; a keypoint whose pairs agree
    # on where it is (two or more) is kept. A wrong match that happens to fit the epipolar
    # line gives a wrong depth, and two wrong ones rarely agree.
    seen: dict = {}
    for i, j in pairs:
        xi, di, ri, ci, fi = features[i]
        xj, dj, rj, cj, fj = features[j]
        if di is None or dj is None or len(di) < 8 or len(dj) < 8:
            continue
        # Guided matching: the poses are known, so a feature's match lies on its epipolar line.
        R = rj.T @ ri  # relative pose j <- i
        t = rj.T @ (ci - cj)
        E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
        f = 0.5 * (fi + fj)
        qi, qj = guided_matches(xi, xj, di, dj, E, max_error_px / f)
        if len(qi) < 4:
            continue
        a, b = xi[qi], xj[qj]
        Pi = np.c_[ri.T, -ri.T @ ci]
        Pj = np.c_[rj.T, -rj.T @ cj]
        X = cv2.triangulatePoints(Pi, Pj, a.T.copy(), b.T.copy())
        X = (X[:3] / np.where(np.abs(X[3]) < 1e-12, 1e-12, X[3])).T
        ok = np.ones(len(X), dtype=bool)
        for P, x in ((Pi, a), (Pj, b)):
            cam = X @ P[:, :3].T + P[:, 3]
            ok &= cam[:, 2] > 0
            proj = cam[:, :2] / np.maximum(cam[:, 2:3], 1e-12)
            ok &= np.linalg.norm(proj - x, axis=1) * f < max_error_px
        ray_i, ray_j = X - ci, X - cj
        cos = np.einsum("ij,ij->i", ray_i, ray_j) / (np.linalg.norm(ray_i, axis=1) * np.linalg.norm(ray_j, axis=1) + 1e-30)
        ok &= cos < math.cos(math.radians(min_angle_deg))
        for k in np.nonzero(ok)[0]:
            seen.setdefault((i, int(qi[k])), []).append(X[k])
            seen.setdefault((j, int(qj[k])), []).append(X[k])
    points, depths = [], {}
    for (i, _), xs in seen.items():
        if len(xs) < min_views - 1:
            continue
        xs = np.stack(xs)
        centre = features[i][3]
        depth = np.linalg.norm(xs - centre, axis=1)
        mid = np.median(depth)
        agree = np.abs(depth - mid) < max_depth_spread * mid
        if agree.sum() >= min_views - 1:
            points.append(xs[agree].mean(0))
            depths.setdefault(i, []).append(mid)
    pts = torch.from_numpy(np.stack(points) if points else np.zeros((0, 3)))
    view_depths = torch.full((n,), math.nan, dtype=torch.float64)
    for i, d in depths.items():
        if len(d) >= 5:
            view_depths[i] = float(np.quantile(d, 0.9))
    return ProbeResult(remove_isolated(pts), view_depths, images=len(features), pairs=len(pairs))


def remove_isolated(points: Tensor, k: int = 8, std_ratio: float = 3.0, max_points: int = 8000) -> Tensor:
    """Statistical outlier removal: drop points whose mean distance to their k nearest neighbours
    is more than `std_ratio` standard deviations above the mean. Wrong depths land alone, far
    in front of or behind the surface; right ones sit on surfaces among others. At most
    `max_points` (an even subsample) are kept: the points only bound the scene."""
    if len(points) > max_points:
        points = points[torch.linspace(0, len(points) - 1, max_points).long()]
    if len(points) <= k:
        return points
    knn = torch.cat([torch.cdist(chunk, points).topk(k + 1, largest=False).values[:, 1:].mean(1) for chunk in points.split(2048)])
    return points[knn <= knn.mean() + std_ratio * knn.std()]

"""The city frame: a similarity taking the SfM world to +z up, origin at the capture centre,
and, when the photos carry GPS, x east, y north and metres. Geometry on a reconstruction only
(sfm.py also uses `city_frame` to score models against GPS)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def umeyama(src: np.ndarray, tgt: np.ndarray, with_scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``tgt ~ s * R @ src + t`` (Umeyama 1991), any dimension.

    Returns (s, R, t). R is a proper rotation (det +1) even for noisy, near-planar points.
    """
    src, tgt = np.asarray(src, np.float64), np.asarray(tgt, np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    xs, xt = src - mu_s, tgt - mu_t
    cov = xt.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_t - scale * rot @ mu_s
    return scale, rot, t


def gps_to_enu(lat_lon_alt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """WGS84 (lat, lon, alt) -> local east/north/up metres around `reference`."""
    import pycolmap

    return np.asarray(pycolmap.GPSTransform().ellipsoid_to_enu(np.asarray(lat_lon_alt, np.float64), *map(float, reference)))


def camera_centres_and_ups(rec) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Names, then centres, up, right and viewing directions [N, 3] in the model's world."""
    names, centres, ups, rights, views = [], [], [], [], []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.image(image_id)
        world_from_cam = image.cam_from_world().inverse()
        rot = world_from_cam.rotation.matrix()
        names.append(image.name)
        centres.append(world_from_cam.translation)
        rights.append(rot[:, 0])
        ups.append(-rot[:, 1])  # COLMAP cameras look along +z with +y pointing down the image
        views.append(rot[:, 2])
    return names, np.array(centres), np.array(ups), np.array(rights), np.array(views)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b), -1.0, 1.0))))


def fit_ground_plane(
    points: np.ndarray, up_hint: np.ndarray, centres: np.ndarray, max_angle_deg: float = 5.0, iterations: int = 500, seed: int = 0
) -> Optional[Dict]:
    """RANSAC for a plane below the cameras whose normal is near `up_hint`.

    Facades are the largest planes in a city capture; only near-horizontal planes under
    the cameras count as ground. Returns None when no plane has enough support.
    """
    if len(points) < 50:
        return None
    up = _unit(up_hint)
    centre = centres.mean(0)
    below = points[(points - centre) @ up < 0]
    if len(below) < 50:
        return None
    spread = np.percentile(np.linalg.norm(below - np.median(below, 0), axis=1), 90)
    tol = 0.01 * spread
    rng = np.random.default_rng(seed)
    best_inliers, cos_max = None, np.cos(np.radians(max_angle_deg))
    for _ in range(iterations):
        a, b, c = below[rng.choice(len(below), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-12:
            continue
        normal = _unit(normal)
        if abs(normal @ up) < cos_max:
            continue
        inliers = np.abs((below - a) @ normal) < tol
        if best_inliers is None or inliers.sum() > best_inliers.sum():
            best_inliers = inliers
    if best_inliers is None or best_inliers.sum() < max(50, 0.1 * len(below)):
        return None
    support = below[best_inliers]
    _, spread_sv, vt = np.linalg.svd(support - support.mean(0), full_matrices=False)
    if spread_sv[1] < 0.2 * spread_sv[0]:
        return None  # inliers along a line (a kerb, a wall's foot): many planes fit, none is known
    normal = vt[-1]  # least-squares refit on the inliers
    normal = normal if normal @ up > 0 else -normal
    if _angle_deg(normal, up) > max_angle_deg:
        return None
    return {"normal": normal, "inliers": int(best_inliers.sum()), "candidates": int(len(below)), "height": float(support.mean(0) @ normal)}


def rotation_from_up(up: np.ndarray, forward_hint: np.ndarray) -> np.ndarray:
    """World -> city rotation whose rows are city x, y, z; z = up, x = hint projected flat."""
    z = _unit(up)
    x = forward_hint - (forward_hint @ z) * z
    if np.linalg.norm(x) < 1e-6:  # hint parallel to up: any horizontal axis will do
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x = _unit(x)
    return np.stack([x, np.cross(z, x), z])


def isolated_cameras(centres: np.ndarray, factor: float = 8.0) -> np.ndarray:
    """Cameras far from every other one compared with the typical spacing: likely misregistered.

    A wrongly registered image lands tens of metres off the path; one such camera would
    dominate the path direction and tilt the estimated up.
    """
    if len(centres) < 4:
        return np.zeros(len(centres), dtype=bool)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(1)
    return nearest > factor * max(float(np.median(nearest)), 1e-12)


def camera_up(ups: np.ndarray, rights: np.ndarray, views: np.ndarray, centres: np.ndarray) -> Tuple[np.ndarray, Dict]:
    """Up from the cameras: perpendicular to their right axes and to the path they follow.

    People hold cameras level (little roll) but tilt them up and down freely, so the
    right axes lie in the horizontal plane while the mean up vector leans with the mean
    pitch (7 deg on lund_door, where facade planes come out vertical with this method).
    When all cameras face one way (a street walk) the right axes fix only one direction;
    the camera path, walked or flown at roughly constant height, supplies the other.
    The sign comes from the cameras' up vectors and viewing directions (they look
    level or down), which also works for nadir drone photos.
    """
    m_right = rights.T @ rights / len(rights)
    spread = centres - centres.mean(0)
    m_path = spread.T @ spread
    m_path = m_path / np.trace(m_path) if np.trace(m_path) > 0 else np.zeros((3, 3))
    evals, evecs = np.linalg.eigh(m_right + m_path)  # ascending
    up = evecs[:, 0]
    if up @ (ups.mean(0) - views.mean(0)) < 0:
        up = -up
    info = {
        "camera_up_agreement": float(np.linalg.norm(ups.mean(0))),  # 1 = all cameras upright alike
        "camera_up_vs_mean_up_deg": _angle_deg(up, ups.mean(0)),
        "camera_up_conditioning": float(evals[1] / max(evals[0], 1e-12)),  # large = well determined
    }
    return up, info


def geometric_up(rec, centres: np.ndarray, ups: np.ndarray, rights: np.ndarray, views: np.ndarray, seed: int) -> Tuple[np.ndarray, Dict]:
    """Up from the cameras, refined by a ground-plane fit when one is found close to it."""
    up, info = camera_up(ups, rights, views, centres)
    points = np.array([p.xyz for p in rec.points3D.values()]) if rec.num_points3D() else np.zeros((0, 3))
    plane = fit_ground_plane(points, up, centres, seed=seed)
    if plane is None:
        info["up_from"] = "cameras"
        return up, info
    info.update(
        up_from="ground_plane",
        ground_inliers=plane["inliers"],
        ground_vs_camera_up_deg=_angle_deg(plane["normal"], up),
    )
    return plane["normal"], info


def robust_similarity(src: np.ndarray, tgt: np.ndarray, threshold: float = 12.0, trials: int = 500, seed: int = 0):
    """RANSAC over minimal sets + Umeyama on the inliers: ``tgt ~ s * R @ src + t``.

    Phone GPS is good to ~10 m, while a misregistered image, or a whole branch of a
    broken model, is off by tens of metres. Least squares spreads such errors over every
    image (no residual then stands out); RANSAC with an absolute threshold in metres
    finds the images that agree. Returns (s, R, t, inlier mask).
    """
    n, dim = src.shape
    rng = np.random.default_rng(seed)
    best = np.ones(n, dtype=bool)
    best_count = -1
    for _ in range(trials if n > dim else 0):
        sample = rng.choice(n, dim, replace=False)
        if np.linalg.svd(src[sample] - src[sample].mean(0), compute_uv=False)[0] < 1e-9:
            continue
        scale, rot, t = umeyama(src[sample], tgt[sample])
        inliers = np.linalg.norm(scale * src @ rot.T + t - tgt, axis=1) <= threshold
        if inliers.sum() > best_count:
            best, best_count = inliers, int(inliers.sum())
    if best.sum() < dim:
        best = np.ones(n, dtype=bool)
    for _ in range(3):  # refit on the inliers, then re-select with the refined fit
        scale, rot, t = umeyama(src[best], tgt[best])
        inliers = np.linalg.norm(scale * src @ rot.T + t - tgt, axis=1) <= threshold
        if inliers.sum() < dim or (inliers == best).all():
            break
        best = inliers
    return scale, rot, t, best


def horizontal_axis(centres: np.ndarray, views: np.ndarray, up: np.ndarray) -> np.ndarray:
    """City x: the main direction of the camera path on the ground, or the mean view direction."""
    flat = centres - centres.mean(0)
    flat = flat - np.outer(flat @ _unit(up), _unit(up))
    if len(flat) >= 2:
        _, s, vt = np.linalg.svd(flat, full_matrices=False)
        if s[0] > 1e-9 and (len(s) < 2 or s[1] < 0.8 * s[0]):
            return vt[0]
    return views.mean(0)


def city_frame(rec, gps: Dict[str, np.ndarray], seed: int = 0) -> Tuple[float, np.ndarray, np.ndarray, Dict, List[str]]:
    """Similarity taking the SfM world to the city frame: ``p_city = s * R @ (p - origin)``.

    With GPS on >= 3 registered images, camera centres are aligned to local ENU metres
    (robust Umeyama): scale becomes metres, x east, y north. GPS up is trusted only if
    the positions span an area (a straight street walk leaves the roll about the street
    free) and agree with the cameras; otherwise the geometric up is kept and GPS only
    supplies heading and scale (a 2D similarity on the ground plane). Images whose SfM
    position disagrees with GPS beyond the fit's tolerance are returned to be dropped.
    """
    names, centres, ups, rights, views = camera_centres_and_ups(rec)
    isolated = isolated_cameras(centres)
    good = ~isolated
    origin = centres[good].mean(0)
    up, info = geometric_up(rec, centres[good], ups[good], rights[good], views[good], seed)
    if isolated.any():
        info["isolated_cameras"] = [names[i] for i in np.flatnonzero(isolated)]
    with_gps = [i for i, n in enumerate(names) if n in gps]
    if len(with_gps) >= 3:
        lla = np.array([gps[names[i]] for i in with_gps])
        reference = lla.mean(0)
        enu = gps_to_enu(lla, reference)
        horizontal = np.linalg.svd(enu[:, :2] - enu[:, :2].mean(0), compute_uv=False)
        if horizontal[0] > 1.0:  # GPS positions spread over more than a metre or so
            src = centres[with_gps]
            gps_info = {"gps_images": len(with_gps), "enu_reference_wgs84": [float(v) for v in reference]}
            scale, rot, t, inliers = robust_similarity(src, enu, seed=seed)
            gps_up = rot.T @ np.array([0.0, 0.0, 1.0])  # ENU up seen in the SfM world
            gps_info["gps_up_vs_geometric_up_deg"] = _angle_deg(gps_up, up)
            planar = horizontal[1] > 0.2 * horizontal[0]
            if planar and gps_info["gps_up_vs_geometric_up_deg"] < 15.0:
                residual = np.linalg.norm(scale * src @ rot.T + t - enu, axis=1)
                info.update(gps_info, up_from="gps", heading_from="gps", scale="metres")
                origin = src[inliers].mean(0)
            else:
                # Keep the geometric up; fit heading and scale on the ground plane only.
                flat_rot = rotation_from_up(up, np.array([1.0, 0.0, 0.0]))
                src2 = (src - origin) @ flat_rot.T
                scale, rot2, t2, inliers = robust_similarity(src2[:, :2], enu[:, :2], seed=seed)
                rot3 = np.eye(3)
                rot3[:2, :2] = rot2
                rot = rot3 @ flat_rot
                residual = np.linalg.norm(scale * src2[:, :2] @ rot2.T + t2 - enu[:, :2], axis=1)
                info.update(gps_info, heading_from="gps", scale="metres",
                            gps_up_rejected="positions nearly on a line" if not planar else "disagrees with the cameras")
            info["gps_rms_m"] = float(np.sqrt((residual[inliers] ** 2).mean()))
            outliers = [names[with_gps[i]] for i in np.flatnonzero(~inliers)]
            if outliers:
                info["gps_outliers"] = {names[with_gps[i]]: float(residual[i]) for i in np.flatnonzero(~inliers)}
            return scale, rot, origin, info, outliers
        info["gps_ignored"] = "GPS positions do not spread (all within about a metre)"
    rot = rotation_from_up(up, horizontal_axis(centres[good], views[good], up))
    info.update(heading_from="camera_path", scale="arbitrary")
    return 1.0, rot, origin, info, []


def drop_images(rec, names: Sequence[str]) -> None:
    """Deregister images (their frames) from the model, e.g. those contradicting GPS."""
    for image_id in list(rec.reg_image_ids()):
        image = rec.image(image_id)
        if image.name in names:
            rec.deregister_frame(image.frame_id)


def apply_city_frame(rec, scale: float, rot: np.ndarray, origin: np.ndarray) -> None:
    """Move the whole reconstruction (cameras and points) into the city frame."""
    import pycolmap

    sim = pycolmap.Sim3d(scale, pycolmap.Rotation3d(rot), -scale * rot @ origin)
    rec.transform(sim)

"""Cameras of a city capture: the drone lawnmower and street-level paths, and the pinhole model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from mclnf_city.scenes.layout import City
from mclnf_city.scenes.options import CityOptions


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

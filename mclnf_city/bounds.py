"""Where the city is: the up axis, the ground plane, the height range and the ground extent.

The partition's box must hold the geometry the training cameras see, whatever the
capture: a nadir mapping flight, an oblique survey at one altitude, an orbit around one
building, a street walk, at any scale and in any world orientation. The estimate works
from scene points (the capture's sparse points, else points triangulated from the images
by `depth_probe`), and from the cameras' view footprints on the ground plane. Without
either it falls back to a generous guess from the cameras alone and says so. Every
estimate can be set by hand (`--pipeline.up`, `--pipeline.height-range`,
`--pipeline.ground-extent`), and `BoundsReport` says in words what was estimated from
what and where it looks weak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

MIN_POINTS = 30
"""Fewer scene points than this and the height range comes from the cameras alone."""


class BoundsError(ValueError):
    """A bound set by hand is impossible (empty range, zero up vector)."""


@dataclass
class BoundsReport:
    """What the city box was estimated from, and checks of it against the cameras and points."""

    source: str
    """'sparse points', 'depth probe', 'cameras only', or 'set by hand'."""
    num_points: int
    up: List[float]
    up_source: str
    num_cameras: int = 0
    points_inside: float = 1.0
    """Fraction of the scene points inside the city box."""
    cameras_inside: int = 0
    cameras_below_ground: int = 0
    rays_hitting: float = 1.0
    """Fraction of sampled pixel rays (ground-bound or ending at a scene point) that cross the box."""
    far_points: int = 0
    """Scene points seen only from far away, left out of the ground extent (the far field holds them)."""
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, box: Tensor) -> List[str]:
        lo, hi = box[0].tolist(), box[1].tolist()
        return [
            f"city box (city frame, scene units): x {lo[0]:.3g} .. {hi[0]:.3g}, y {lo[1]:.3g} .. {hi[1]:.3g}, "
            f"height {lo[2]:.3g} .. {hi[2]:.3g}",
            f"  from {self.source} ({self.num_points:,} points); up {fmt_vec(self.up)} ({self.up_source})",
            f"  {100 * self.points_inside:.1f} % of the points inside; {self.cameras_inside}/{self.num_cameras} cameras inside, "
            f"{self.cameras_below_ground} below the ground; {100 * self.rays_hitting:.0f} % of sampled pixel rays cross the box",
        ] + (
            [f"  {self.far_points:,} points seen only from far away left to the far field (--pipeline.ground-extent to include them)"]
            if self.far_points
            else []
        )


def fmt_vec(v) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


# ----------------------------------------------------------------------------- boxes
def ray_box_intersect(origins: Tensor, directions: Tensor, box_min: Tensor, box_max: Tensor) -> Tuple[Tensor, Tensor]:
    """Slab test of rays against axis-aligned boxes.

    Args:
        origins, directions: [N, 3] rays (directions need not be unit length).
        box_min, box_max: [B, 3] boxes.
    Returns:
        t_near, t_far: [N, B]. The ray (t >= 0) crosses box b iff ``t_far > max(t_near, 0)``.
    """
    # Avoid 0 * inf = nan for axis-parallel rays: a tiny epsilon keeps the sign.
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / safe
    t0 = (box_min[None] - origins[:, None]) * inv[:, None]  # [N, B, 3]
    t1 = (box_max[None] - origins[:, None]) * inv[:, None]
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def rays_cross(t_near: Tensor, t_far: Tensor) -> Tensor:
    """Whether the forward half-line (t >= 0) crosses the box, from `ray_box_intersect`."""
    return t_far > t_near.clamp_min(0.0)


# ----------------------------------------------------------------------------- up axis
def estimate_up(camera_to_worlds: Tensor) -> Tuple[Tensor, str]:
    """Up axis from cameras (and how it was found).

    1. Right vectors of upright cameras are horizontal whatever their pitch, so with several
       headings, up is the direction least represented among them.
    2. With one heading (a mapping flight that never turns, a straight walk), up lies in the
       plane normal to that right vector: if the camera centres spread over a plane (a flight
       at one altitude), its normal; else the cameras' mean up vector.
    The sign: cameras look down or level more often than up, and are upright, so up is on the
    side of their (up + back) vectors.
    """
    c2w = camera_to_worlds.double()
    right, cam_up, back = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2]
    evals, evecs = torch.linalg.eigh(right.T @ right / len(right))
    if evals[1] > 0.02 * evals[2]:
        up, how = evecs[:, 0], "normal to the cameras' right vectors"
    else:
        r = evecs[:, 2]
        centres = c2w[:, :3, 3] - c2w[:, :3, 3].mean(0)
        ce, cv = torch.linalg.eigh(centres.T @ centres / len(centres))
        normal = cv[:, 0] - (cv[:, 0] @ r) * r
        if ce[1] > 0.05 * ce[2] and ce[0] < 0.05 * ce[1] and normal.norm() > 0.9:
            up, how = normal, "one heading: normal of the plane of the camera centres"
        else:
            m = cam_up.mean(0)
            up, how = m - (m @ r) * r, "one heading: the cameras' mean up vector (weak; set --pipeline.up if wrong)"
    up = up / up.norm()
    sign = ((cam_up + back) @ up).sum()
    return (up if sign >= 0 else -up), how


def frame_from_up(up: Tensor) -> Tensor:
    """Rotation whose rows are (x, y, up): x is the input frame's x axis laid flat.

    Keeping the dataparser's own horizontal axes (rather than, say, a principal direction
    of the points, which is arbitrary for a square city) keeps the grid predictable.
    """
    x = torch.tensor([1.0, 0.0, 0.0], dtype=up.dtype)
    if abs(float(x @ up)) > 0.9:  # up is close to x: use y instead
        x = torch.tensor([0.0, 1.0, 0.0], dtype=up.dtype)
    x = x - (x @ up) * up
    x = x / x.norm()
    y = torch.linalg.cross(up, x)
    return torch.stack([x, y, up])


# ----------------------------------------------------------------------------- rays
def pixel_rays(camera_to_worlds: Tensor, intrinsics: Tensor, sizes: Tensor, per_side: int = 9) -> Tuple[Tensor, Tensor]:
    """A per_side x per_side grid of pixel rays per camera (pinhole): origins, unit directions [N * per_side^2, 3]."""
    c2w = camera_to_worlds.double()
    u = (torch.arange(per_side, dtype=torch.float64) + 0.5) / per_side
    gu, gv = torch.meshgrid(u, u, indexing="xy")
    w, h = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    fx, fy, cx, cy = (intrinsics[:, i : i + 1].double() for i in range(4))
    px, py = gu.reshape(1, -1) * w, gv.reshape(1, -1) * h
    d_cam = torch.stack([(px - cx) / fx, -(py - cy) / fy, -torch.ones_like(px)], -1)  # OpenGL camera
    d = torch.einsum("nij,nkj->nki", c2w[:, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, None, :3, 3].expand_as(d)
    return o.reshape(-1, 3), d.reshape(-1, 3)


def ground_footprint(origins: Tensor, dirs: Tensor, up: Tensor, ground: float, max_depth: Tensor) -> Tensor:
    """Where rays meet the ground plane (height `ground` along `up`) within `max_depth` ([N]): [M, 3]."""
    dz = dirs @ up
    t = (ground - origins @ up) / torch.where(dz.abs() < 1e-9, torch.full_like(dz, -1e-9), dz)
    ok = (t > 0) & (t <= max_depth)
    return origins[ok] + t[ok, None] * dirs[ok]


# ----------------------------------------------------------------------------- estimate
@dataclass
class CityBounds:
    rotation: Tensor
    """[3, 3] world -> city frame (rows: x, y, up)."""
    lo: Tensor
    """[2] ground extent's lower corner (city x, y)."""
    hi: Tensor
    z_range: Tuple[float, float]
    report: BoundsReport

    def box(self) -> Tensor:
        """[2, 3] the city box in the city frame."""
        return torch.tensor(
            [[self.lo[0].item(), self.lo[1].item(), self.z_range[0]], [self.hi[0].item(), self.hi[1].item(), self.z_range[1]]],
            dtype=torch.float64,
        )


def estimate_bounds(
    camera_to_worlds: Tensor,
    points: Optional[Tensor] = None,
    intrinsics: Optional[Tensor] = None,
    sizes: Optional[Tensor] = None,
    points_source: str = "sparse points",
    view_depths: Optional[Tensor] = None,
    up: Optional[Tuple[float, float, float]] = None,
    height_range: Optional[Tuple[float, float]] = None,
    ground_extent: Optional[Tuple[float, float, float, float]] = None,
    margin: float = 0.05,
) -> CityBounds:
    """The city frame and box of a capture.

    Args:
        camera_to_worlds: [N, 3, 4] OpenGL convention (x right, y up, z back).
        points: [M, 3] scene points (sparse points or the depth probe's), or None.
        intrinsics, sizes: [N, 4] fx, fy, cx, cy and [N, 2] width, height; with them, the ground
            the cameras see (their pixel rays meeting the ground plane) widens the extent.
        points_source: what the points are, for the report.
        view_depths: [N] how far each camera sees (the depth probe's; NaN where unknown): its
            ground footprint reaches 1.5 times that far.
        up, height_range, ground_extent: set by hand (world up vector; ground and top heights
            along up; x min, x max, y min, y max in the city frame), each replacing its estimate.
        margin: padding on each side, as a fraction of the box's size along that axis.
    """
    c2w = camera_to_worlds.double()
    centres = c2w[:, :3, 3]
    warnings: List[str] = []
    if up is not None:
        up_t = torch.tensor(up, dtype=torch.float64)
        if not torch.isfinite(up_t).all() or up_t.norm() < 1e-9:
            raise BoundsError(f"--pipeline.up {up} is not a direction")
        up_t, up_how = up_t / up_t.norm(), "set by hand"
    else:
        up_t, up_how = estimate_up(c2w)
        if "weak" in up_how:
            warnings.append("the up axis is a guess (every camera has the same heading and the centres lie on a line)")
    rot = frame_from_up(up_t)
    cam = centres @ rot.T
    cam_h = cam[:, 2]
    pts = points.double() if points is not None and len(points) >= MIN_POINTS else None
    have_rays = intrinsics is not None and sizes is not None
    far_points = 0
    span = max((cam[:, :2].max(0).values - cam[:, :2].min(0).values).max().item(), (cam_h.max() - cam_h.min()).item(), 1e-9)

    if pts is not None:
        p = pts @ rot.T
        # Triangulated points hold a few wrong depths: a lower quantile keeps them out of the ground.
        low = 0.01 if points_source == "sparse points" else 0.02
        # The top: above all but the highest 0.1 % of the points (and at least 3 of them).
        high = 1.0 - max(0.001, 3.0 / len(p))
        ground, top = torch.quantile(p[:, 2], low).item(), torch.quantile(p[:, 2], high).item()
        if (-c2w[:, :3, 2] @ up_t).median() < -0.3:
            # A survey from above: nothing it maps stands above it, and flat roofs give few
            # features, so the tallest ones may be missing from the points: reach at least
            # three quarters of the way up to the cameras.
            up_to = cam_h.median().item()
            top = min(max(top, ground + 0.75 * (up_to - ground)), cam_h.max().item())
        # How far the cameras see the ground: a little beyond the points (their distance to the
        # nearest camera), and at least four times the cameras' typical height above the ground.
        to_camera = torch.cdist(pts, centres).min(dim=1).values
        near = torch.quantile(to_camera, 0.95).item()
        # The extent rests on the points seen from near by: a point farther from every camera
        # than three times the distance of 90 % of them is distant scenery (down a street) or a
        # bad triangulation, and a handful of them would stretch the box over empty ground,
        # where the blocks' steps are wasted; the contracted far field holds them instead.
        seen_near = to_camera <= 3.0 * torch.quantile(to_camera, 0.9)
        far_points = int((~seen_near).sum())
        reach = torch.full((len(c2w),), 4.0 * max(near, (cam_h - ground).median().item()), dtype=torch.float64)
        if view_depths is not None and torch.isfinite(view_depths).sum() >= 3:
            # Each camera sees the ground about as far as it sees the rest of the scene.
            known = torch.isfinite(view_depths)
            seen = torch.where(known, view_depths.double(), view_depths[known].double().median())
            reach = torch.maximum(1.5 * seen, 4.0 * (cam_h - ground).clamp_min(0))
        source = points_source
        if len(pts) < 200:
            warnings.append(f"only {len(pts)} scene points ({points_source}): the city box rests on few points")
    else:
        # No scene points: a generous box around the cameras, grown by half their spread
        # sideways and upwards and by twice it downwards (a survey rarely flies higher than
        # twice the width it covers); contraction covers what the box misses.
        ground, top = cam_h.min().item() - 2.0 * span, cam_h.max().item() + 0.5 * span
        reach = torch.full((len(c2w),), span, dtype=torch.float64)
        source = "cameras only"
        got = f"{len(points)} {points_source}" if points is not None else "no scene points"
        warnings.append(
            f"{got}: the height range is a generous guess from the cameras alone; "
            "set --pipeline.height-range (and --pipeline.ground-extent) if the scene is known"
        )
        forward = -c2w[:, :3, 2]
        mean_dir = forward.mean(0).norm().item()
        if mean_dir > 0.98:
            warnings.append("the principal rays are near parallel, so where they meet says nothing about the ground")

    xy = [cam[:, :2]] if pts is None else [p[seen_near, :2]]
    # Sparse points from structure from motion cover the ground they saw; triangulated probe
    # points are fewer, so the ground the cameras see widens the extent.
    if have_rays and source != "sparse points":
        per_side = 9
        o, d = pixel_rays(c2w, intrinsics, sizes, per_side)
        # City-frame heights are heights along up (the frame's third row is up, origin kept).
        foot = ground_footprint(o, d, up_t, ground, reach.repeat_interleave(per_side**2))
        if len(foot):
            xy.append((foot @ rot.T)[:, :2])
    xy = torch.cat(xy)
    lo, hi = torch.quantile(xy, 0.002, dim=0), torch.quantile(xy, 0.998, dim=0)
    if pts is None:
        lo = torch.minimum(lo, cam[:, :2].min(0).values - 0.5 * span)
        hi = torch.maximum(hi, cam[:, :2].max(0).values + 0.5 * span)
    size = (hi - lo).clamp_min(1e-9)
    lo, hi = lo - margin * size, hi + margin * size
    height = max(top - ground, 1e-9)
    ground, top = ground - margin * height, top + margin * height
    hand = []
    if height_range is not None:
        if not height_range[1] > height_range[0]:
            raise BoundsError(f"--pipeline.height-range {tuple(height_range)}: the top must be above the ground")
        ground, top = float(height_range[0]), float(height_range[1])
        hand.append("height range")
    if ground_extent is not None:
        x0, x1, y0, y1 = (float(v) for v in ground_extent)
        if not (x1 > x0 and y1 > y0):
            raise BoundsError(f"--pipeline.ground-extent {tuple(ground_extent)}: expected x min < x max and y min < y max")
        lo, hi = torch.tensor([x0, y0], dtype=torch.float64), torch.tensor([x1, y1], dtype=torch.float64)
        hand.append("ground extent")
    if hand:
        source = f"{source}; {' and '.join(hand)} set by hand"

    bounds = CityBounds(rot, lo, hi, (ground, top), BoundsReport(source, 0 if pts is None else len(pts), up_t.tolist(), up_how, far_points=far_points))
    check_bounds(bounds, c2w, pts, intrinsics, sizes, warnings)
    return bounds


def check_bounds(
    bounds: CityBounds, c2w: Tensor, points: Optional[Tensor], intrinsics: Optional[Tensor], sizes: Optional[Tensor], warnings: List[str]
) -> None:
    """Fill the report's checks (points and cameras inside, rays crossing) and its warnings."""
    rot, box = bounds.rotation, bounds.box()
    r = bounds.report
    cam = c2w[:, :3, 3] @ rot.T
    inside = lambda q: ((q >= box[0]) & (q <= box[1])).all(-1)  # noqa: E731
    r.num_cameras = len(cam)
    r.cameras_inside = int(inside(cam).sum())
    r.cameras_below_ground = int((cam[:, 2] < box[0, 2]).sum())
    if points is not None and len(points):
        r.points_inside = float(inside(points.double() @ rot.T).float().mean())
        if r.points_inside < 0.95:
            warnings.append(f"only {100 * r.points_inside:.0f} % of the scene points lie inside the city box")
    if intrinsics is not None and sizes is not None:
        o, d = pixel_rays(c2w, intrinsics, sizes, per_side=5)
        o, d = o @ rot.T, d @ rot.T
        t_near, t_far = ray_box_intersect(o, d, box[0:1], box[1:2])
        crossing = rays_cross(t_near, t_far)[:, 0]
        # Rays into the open sky cross nothing in any scene: count the rest.
        relevant = (d[:, 2] < 0) | crossing
        r.rays_hitting = float(crossing[relevant].float().mean()) if relevant.any() else 1.0
        if r.rays_hitting < 0.5:
            warnings.append(
                f"only {100 * r.rays_hitting:.0f} % of the cameras' ground-bound pixel rays cross the city box: "
                "most of what they see lies outside it"
            )
    if r.cameras_below_ground > 0.5 * r.num_cameras:
        warnings.append(
            f"{r.cameras_below_ground} of {r.num_cameras} cameras lie below the ground: the up axis may be upside down (--pipeline.up)"
        )
    r.warnings = warnings


def capture_bounds(
    outputs,
    up: Optional[Tuple[float, float, float]] = None,
    height_range: Optional[Tuple[float, float]] = None,
    ground_extent: Optional[Tuple[float, float, float, float]] = None,
    depth_probe: bool = True,
) -> Tuple[CityBounds, Optional[Tensor]]:
    """The city box of a capture as nerfstudio's dataparser gives it (`DataparserOutputs` of the
    training split), and the scene points it rests on: the capture's sparse points, else (with
    `depth_probe`, for pinhole cameras) points triangulated from the training images."""
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.utils.rich_utils import CONSOLE

    from mclnf_city.depth_probe import triangulate_capture

    cameras = outputs.cameras
    c2w = cameras.camera_to_worlds
    pinhole = bool((cameras.camera_type == CameraType.PERSPECTIVE.value).all())
    intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1) if pinhole else None
    sizes = torch.cat([cameras.width, cameras.height], -1) if pinhole else None
    points, source, view_depths = outputs.metadata.get("points3D_xyz"), "sparse points", None
    if (points is None or len(points) < MIN_POINTS) and depth_probe and pinhole and height_range is None:
        with CONSOLE.status("[bold]No sparse points in the capture: triangulating features of the training images (depth probe)"):
            probe = triangulate_capture(c2w, intrinsics, sizes, outputs.image_filenames, cameras.distortion_params)
        CONSOLE.print(f"Depth probe: {probe.summary()}")
        points, source, view_depths = probe.points, "depth probe", probe.view_depths
    bounds = estimate_bounds(
        c2w, points, intrinsics, sizes, source, view_depths, up=up, height_range=height_range, ground_extent=ground_extent
    )
    return bounds, points


# ----------------------------------------------------------------------------- picture
def save_bounds_figure(path: Path, bounds_box: Tensor, rotation: Tensor, c2w: Tensor, points: Optional[Tensor], edges=None) -> None:
    """Top and side views of the city box against the cameras and the scene points (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    box = bounds_box.double()
    cam = c2w.double()[:, :3, 3] @ rotation.T
    fwd = -c2w.double()[:, :3, 2] @ rotation.T
    pts = None if points is None or not len(points) else points.double() @ rotation.T
    if pts is not None and len(pts) > 20000:
        pts = pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))[:20000]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    span = max((box[1] - box[0]).max().item(), 1e-9)
    for ax, (a, b), title in zip(axes, ((0, 1), (0, 2), (1, 2)), ("top view (x, y)", "side view (x, height)", "side view (y, height)")):
        if pts is not None:
            ax.scatter(pts[:, a], pts[:, b], s=1, c="0.5", label="scene points")
        ax.scatter(cam[:, a], cam[:, b], s=8, c="tab:blue", label="cameras")
        arrow = 0.05 * span * fwd
        ax.quiver(cam[:, a], cam[:, b], arrow[:, a], arrow[:, b], color="tab:blue", angles="xy", scale_units="xy", scale=1, width=0.002)
        ax.add_patch(plt.Rectangle((box[0, a], box[0, b]), box[1, a] - box[0, a], box[1, b] - box[0, b], fill=False, ec="tab:red", lw=2, label="city box"))
        if edges is not None and (a, b) == (0, 1):
            for x in edges[0]:
                ax.plot([x, x], [box[0, 1], box[1, 1]], c="tab:red", lw=0.5)
            for y in edges[1]:
                ax.plot([box[0, 0], box[1, 0]], [y, y], c="tab:red", lw=0.5)
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)

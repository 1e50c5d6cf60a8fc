"""Spatial partition of a capture: a grid of blocks on the ground plane.

The partition lives in a *city frame*: x and y span the ground plane, z is up, and
``p_city = R @ (p_world - origin)``. Every block is an axis-aligned box in that frame,
the blocks tile a rectangle on the ground and share one city-wide height range, so
one block-local parameterisation (box -> [-1, 1]^3) fits every block.

The city box (frame, ground extent, height range) comes from `mclnf_city/bounds.py`.

Two kinds of box exist per block:
- the *region* (no overlap): routing of samples uses it, so every point of the city
  belongs to exactly one block;
- the *expanded box* (region grown by the overlap margin): pixel assignment and the
  block's local coordinates use it, so a block also learns a seam around its region.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mclnf_city.bounds import CityBounds, estimate_bounds, ray_box_intersect, rays_cross
from mclnf_city.files import atomic_write_bytes


class PartitionError(ValueError):
    """The capture cannot be partitioned (too small, degenerate, or bad cameras)."""


@dataclass
class BlockPartition:
    """A grid of blocks in a city frame.

    By default every cell of the ``x_edges`` x ``y_edges`` grid is a block, id ``ix * ny + iy``.
    A city grown later (`mclnf_city/grow.py`) lists its blocks in `cells` instead: block b is
    cell ``cells[b]`` of the (extended) grid, so existing blocks keep their ids and boxes
    while new ones are appended, and grid cells no block holds are outside the city.
    """

    rotation: Tensor  # [3, 3] world -> city rotation (rows: city x, y, up in world coordinates)
    origin: Tensor  # [3] world position of the city frame origin
    x_edges: Tensor  # [nx + 1] block edges along city x
    y_edges: Tensor  # [ny + 1]
    z_range: Tuple[float, float]  # city-wide height range (ground, top)
    overlap: float  # margin added on each side of a region, city units
    stream_order: List[int]
    cells: Optional[List[Tuple[int, int]]] = None  # block b = grid cell cells[b]; None: every cell, id ix * ny + iy

    @property
    def grid(self) -> Tuple[int, int]:
        """Cells of the grid along x and y (a grown city may leave some of them without a block)."""
        return len(self.x_edges) - 1, len(self.y_edges) - 1

    @property
    def num_blocks(self) -> int:
        if self.cells is not None:
            return len(self.cells)
        nx, ny = self.grid
        return nx * ny

    def cell(self, b: int) -> Tuple[int, int]:
        """Grid cell (ix, iy) of block b."""
        if self.cells is not None:
            return tuple(self.cells[b])  # type: ignore[return-value]
        return divmod(b, self.grid[1])

    def cell_blocks(self) -> Tensor:
        """[nx, ny] block id of every grid cell, -1 where no block is."""
        nx, ny = self.grid
        if self.cells is None:
            return torch.arange(nx * ny).reshape(nx, ny)
        table = torch.full((nx, ny), -1, dtype=torch.long)
        for b, (ix, iy) in enumerate(self.cells):
            table[ix, iy] = b
        return table

    # ----- frames -----
    def to_city(self, points: Tensor) -> Tensor:
        """World points [..., 3] -> city frame."""
        return (points - self.origin.to(points)) @ self.rotation.to(points).T

    def dirs_to_city(self, directions: Tensor) -> Tensor:
        return directions @ self.rotation.to(directions).T

    # ----- boxes -----
    def regions(self) -> Tensor:
        """[B, 2, 3] region boxes (min, max) in the city frame, without overlap."""
        ix, iy = torch.tensor([self.cell(b) for b in range(self.num_blocks)], dtype=torch.long).reshape(-1, 2).unbind(1)
        z0, z1 = (torch.full_like(self.x_edges[ix], z) for z in self.z_range)
        lo = torch.stack([self.x_edges[ix], self.y_edges[iy], z0], dim=-1)
        hi = torch.stack([self.x_edges[ix + 1], self.y_edges[iy + 1], z1], dim=-1)
        return torch.stack([lo, hi], dim=1)

    def expanded_boxes(self) -> Tensor:
        """[B, 2, 3] boxes grown by the overlap margin horizontally (height range unchanged)."""
        boxes = self.regions().clone()
        boxes[:, 0, :2] -= self.overlap
        boxes[:, 1, :2] += self.overlap
        return boxes

    def city_box(self) -> Tensor:
        """[2, 3] the box that holds every region (the whole grid)."""
        return torch.tensor(
            [[self.x_edges[0], self.y_edges[0], self.z_range[0]], [self.x_edges[-1], self.y_edges[-1], self.z_range[1]]],
            dtype=self.x_edges.dtype,
        )

    # ----- routing -----
    def locate(self, points: Tensor) -> Tensor:
        """Block id of the region holding each world point [..., 3], or -1 outside every region.

        Regions are half-open [lo, hi) except the last one on each axis, which is closed, so
        a point on a shared face belongs to exactly one block.
        """
        p = self.to_city(points)
        xe, ye = self.x_edges.to(p), self.y_edges.to(p)
        nx, ny = self.grid
        ix = torch.searchsorted(xe, p[..., 0].contiguous(), right=True) - 1
        iy = torch.searchsorted(ye, p[..., 1].contiguous(), right=True) - 1
        ix = torch.where(p[..., 0] == xe[-1], torch.full_like(ix, nx - 1), ix)
        iy = torch.where(p[..., 1] == ye[-1], torch.full_like(iy, ny - 1), iy)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        inside &= (p[..., 2] >= self.z_range[0]) & (p[..., 2] <= self.z_range[1])
        if self.cells is None:
            return torch.where(inside, ix * ny + iy, torch.full_like(ix, -1))
        table = self.cell_blocks().to(ix.device)
        ids = table[ix.clamp(0, nx - 1), iy.clamp(0, ny - 1)]
        return torch.where(inside, ids, torch.full_like(ix, -1))

    def block_of_xy(self, points: Tensor) -> Tensor:
        """Block whose ground footprint is nearest each world point (clamped to the grid; in a
        grown city, a grid cell without a block gives the block whose centre is nearest)."""
        p = self.to_city(points)
        nx, ny = self.grid
        ix = (torch.searchsorted(self.x_edges.to(p), p[..., 0].contiguous(), right=True) - 1).clamp(0, nx - 1)
        iy = (torch.searchsorted(self.y_edges.to(p), p[..., 1].contiguous(), right=True) - 1).clamp(0, ny - 1)
        if self.cells is None:
            return ix * ny + iy
        ids = self.cell_blocks().to(ix.device)[ix, iy]
        missing = ids < 0
        if missing.any():
            centres = self.regions().mean(1)[:, :2].to(p)
            nearest = torch.cdist(p[missing][:, :2].reshape(-1, 2), centres).argmin(-1)
            ids = ids.clone()
            ids[missing] = nearest.to(ids)
        return ids

    def city_segment(self, origins: Tensor, directions: Tensor, box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Where world rays cross the city box (or `box`, [2, 3] in the city frame): (near [N], far [N], hit [N] bool)."""
        box = (self.city_box() if box is None else box).to(origins)
        t_near, t_far = ray_box_intersect(self.to_city(origins), self.dirs_to_city(directions), box[0:1], box[1:2])
        t_near, t_far = t_near[:, 0].clamp_min(0.0), t_far[:, 0]
        hit = t_far > t_near
        return t_near, torch.where(hit, t_far, t_near), hit

    def crossing_mask(self, origins: Tensor, directions: Tensor, blocks: Optional[Sequence[int]] = None) -> Tensor:
        """[N, B] whether each world ray crosses each block's expanded box (only `blocks`' boxes, in
        that order, when given)."""
        boxes = self.expanded_boxes().to(origins)
        if blocks is not None:
            boxes = boxes[list(blocks)]
        t_near, t_far = ray_box_intersect(self.to_city(origins), self.dirs_to_city(directions), boxes[:, 0], boxes[:, 1])
        return rays_cross(t_near, t_far)

    # ----- persistence -----
    def to_dict(self) -> Dict:
        return {
            "rotation": self.rotation.tolist(),
            "origin": self.origin.tolist(),
            "x_edges": self.x_edges.tolist(),
            "y_edges": self.y_edges.tolist(),
            "z_range": list(self.z_range),
            "overlap": self.overlap,
            "stream_order": list(self.stream_order),
            **({"cells": [list(c) for c in self.cells]} if self.cells is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "BlockPartition":
        f64 = torch.float64
        return cls(
            rotation=torch.tensor(d["rotation"], dtype=f64),
            origin=torch.tensor(d["origin"], dtype=f64),
            x_edges=torch.tensor(d["x_edges"], dtype=f64),
            y_edges=torch.tensor(d["y_edges"], dtype=f64),
            z_range=(float(d["z_range"][0]), float(d["z_range"][1])),
            overlap=float(d["overlap"]),
            stream_order=[int(b) for b in d["stream_order"]],
            cells=[(int(c[0]), int(c[1])) for c in d["cells"]] if d.get("cells") is not None else None,
        )

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> "BlockPartition":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------------------
# Estimation from a capture
# ----------------------------------------------------------------------------------------


def check_camera_spread(camera_to_worlds: Tensor, image_names: Optional[Sequence[str]] = None, max_camera_distance: float = 20.0) -> None:
    """Name cameras far from the others: almost always broken poses, which would stretch the city.

    Robust centre and radius (medians), so one bad pose cannot hide.
    """
    c2w = camera_to_worlds.double()
    if len(c2w) < 2:
        raise PartitionError(f"a capture needs at least 2 training images to partition, got {len(c2w)}")
    centers = c2w[:, :3, 3]
    middle = centers.median(dim=0).values
    dist = (centers - middle).norm(dim=-1)
    radius = max(dist.median().item(), 1e-6 * max(middle.norm().item(), 1e-30))
    bad = torch.nonzero(dist > max_camera_distance * radius).flatten().tolist()
    if bad:
        names = [image_names[i] if image_names else f"image {i}" for i in bad[:10]]
        raise PartitionError(
            f"{len(bad)} camera(s) lie more than {max_camera_distance:g}x the median camera distance from the "
            f"capture's centre (broken poses?): {', '.join(map(str, names))}{' ...' if len(bad) > 10 else ''}"
        )


def partition_from_bounds(
    bounds: CityBounds,
    camera_to_worlds: Tensor,
    grid: Tuple[int, int] = (2, 2),
    block_size: Optional[float] = None,
    overlap_fraction: float = 0.15,
) -> BlockPartition:
    """The block grid over a city box: `grid` blocks, or blocks of edge `block_size` (scene units)."""
    lo, hi = bounds.lo.double(), bounds.hi.double()
    extent = hi - lo
    ground, top = bounds.z_range
    if not torch.all(extent > 0) or not top > ground:
        raise PartitionError(f"capture too small to partition: ground extent {extent.tolist()}, height range ({ground:.3g}, {top:.3g})")
    if block_size is not None:
        if block_size <= 0:
            raise PartitionError(f"block_size must be positive, got {block_size}")
        nx, ny = (max(1, math.ceil(e / block_size)) for e in extent.tolist())
        size = torch.tensor([nx * block_size, ny * block_size], dtype=torch.float64)
        lo = lo - (size - extent) / 2
        hi = lo + size
    else:
        nx, ny = grid
        if nx < 1 or ny < 1:
            raise PartitionError(f"grid must have at least one block per axis, got {grid}")
    x_edges = torch.linspace(lo[0].item(), hi[0].item(), nx + 1, dtype=torch.float64)
    y_edges = torch.linspace(lo[1].item(), hi[1].item(), ny + 1, dtype=torch.float64)
    # The city frame is a pure rotation of the dataparser frame (origin kept at its origin).
    origin = torch.zeros(3, dtype=torch.float64)
    overlap = overlap_fraction * min((hi - lo)[0].item() / nx, (hi - lo)[1].item() / ny)
    partition = BlockPartition(bounds.rotation.double(), origin, x_edges, y_edges, (ground, top), overlap, list(range(nx * ny)))
    partition.stream_order = visit_order(partition, camera_to_worlds.double())
    return partition


def estimate_partition(
    camera_to_worlds: Tensor,
    points: Optional[Tensor] = None,
    grid: Tuple[int, int] = (2, 2),
    block_size: Optional[float] = None,
    overlap_fraction: float = 0.15,
    image_names: Optional[Sequence[str]] = None,
    max_camera_distance: float = 20.0,
    **bounds_options,
) -> BlockPartition:
    """Check the cameras, estimate the city box (`bounds.estimate_bounds`, which takes
    `bounds_options`) and lay the block grid over it.

    Args:
        camera_to_worlds: [N, 3, 4] OpenGL convention (x right, y up, z back).
        points: optional [M, 3] scene points (ground level, building tops, extent).
        grid: blocks along city x and y (ignored when block_size is given).
        block_size: block edge length in scene units; the grid count follows from the extent.
        overlap_fraction: overlap margin on each side, as a fraction of the block edge.
        image_names: for error messages.
        max_camera_distance: cameras farther from the median camera position than this many
            times the median distance are reported as an error (a wrong pose, not a far viewpoint).
    """
    check_camera_spread(camera_to_worlds, image_names, max_camera_distance)
    bounds = estimate_bounds(camera_to_worlds, points, **bounds_options)
    return partition_from_bounds(bounds, camera_to_worlds, grid, block_size, overlap_fraction)


def look_blocks(partition: BlockPartition, camera_to_worlds: Tensor) -> Tensor:
    """[N] the block each camera looks at.

    That is the block under the point where the camera's principal ray meets the middle of
    the height range (or under the camera, for rays that never get there).
    """
    c2w = camera_to_worlds.double()
    o = partition.to_city(c2w[:, :3, 3])
    f = partition.dirs_to_city(-c2w[:, :3, 2])
    mid = 0.5 * (partition.z_range[0] + partition.z_range[1])
    t = (mid - o[:, 2]) / torch.where(f[:, 2].abs() < 1e-9, torch.full_like(f[:, 2], 1e-9), f[:, 2])
    t = torch.where(t > 0, t, torch.zeros_like(t))
    return partition.block_of_xy(c2w[:, :3, 3] + t[:, None] * (-c2w[:, :3, 2]))


def visit_order(partition: BlockPartition, camera_to_worlds: Tensor) -> List[int]:
    """Blocks in the order the capture first looks at them (see `look_blocks`).

    Blocks no camera looks at go last, nearest-first to the blocks already ordered.
    """
    order: List[int] = []
    for b in look_blocks(partition, camera_to_worlds).tolist():
        if b not in order:
            order.append(b)
    centers = partition.regions().mean(1)
    rest = [b for b in range(partition.num_blocks) if b not in order]
    while rest:
        ref = centers[order] if order else centers[:1]
        nxt = min(rest, key=lambda b: (centers[b] - ref).norm(dim=-1).min().item())
        order.append(nxt)
        rest.remove(nxt)
    return order


def partition_table(partition: BlockPartition, images: Dict[int, int], rays: Dict[int, int], title: str = "Block partition"):
    """A rich table: block id, bounds, images, rays (for printing at the start of a run)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("block", "stream #", "x range", "y range", "z range", "images", "rays"):
        table.add_column(col, justify="right")
    regions = partition.regions()
    position = {b: i for i, b in enumerate(partition.stream_order)}
    for b in range(partition.num_blocks):
        lo, hi = regions[b, 0].tolist(), regions[b, 1].tolist()
        table.add_row(
            str(b),
            str(position.get(b, "-")),
            f"{lo[0]:.3f} .. {hi[0]:.3f}",
            f"{lo[1]:.3f} .. {hi[1]:.3f}",
            f"{lo[2]:.3f} .. {hi[2]:.3f}",
            str(images.get(b, 0)),
            f"{rays.get(b, 0):,}",
        )
    return table


def too_few_rays(rays: Dict[int, int], min_rays: int) -> Dict[int, str]:
    """Blocks crossed by fewer than `min_rays` training rays (they stay empty), with the reason."""
    return {b: f"{n} training rays < --pipeline.min-rays-per-block {min_rays}" for b, n in rays.items() if n < min_rays}

"""Mesh, block by block, without cracks.

One global lattice covers the city box (in the city frame, where block regions are
axis-aligned). Every lattice cube belongs to exactly one block (the block whose region holds
the cube's centre); a block runs marching cubes on its own cubes, i.e. on its range of lattice
points including the border planes it shares with its neighbours. The density at a lattice
point is the city's routed density (`CityModel.density_at`), evaluated in fixed, globally
aligned tiles, so a border point has bit for bit the same value whichever block asks. Marching
cubes is local to each cube, so the union of the blocks' triangles is exactly the triangle set
of one marching cubes over the whole lattice; vertices are then welded by the lattice edge they
lie on. Memory is bounded by one block.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mclnf_city.export.city import ExportError, LoadedCity, city_to_world

NOT_A_POINT = 3  # weld key "axis" of a vertex that sits on a lattice point (not inside an edge)


@dataclass
class CityLattice:
    """Regular lattice of points in the city frame: point (i, j, k) = origin + spacing * (i, j, k)."""

    origin: np.ndarray  # [3] city frame
    spacing: float  # city (nerfstudio) units
    shape: Tuple[int, int, int]  # points along x, y, z

    @classmethod
    def over_city(cls, partition, spacing: float) -> "CityLattice":
        """The lattice filling the city box, every point inside it (a point outside every region
        would read density 0 and make a false wall at the box's sides)."""
        box = partition.city_box().numpy()
        inset = 1e-3 * spacing  # keeps the outermost points inside after rounding to float32
        size = box[1] - box[0] - 2 * inset
        shape = tuple(int(math.floor(s / spacing)) + 1 for s in size)
        if min(shape) < 2:
            raise ExportError(f"--resolution too coarse: the lattice would have {shape} points (need at least 2 per axis)")
        return cls(box[0] + inset, spacing, shape)  # type: ignore[arg-type]

    def points_city(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.origin + self.spacing * np.stack([i, j, k], axis=-1).astype(np.float64)

    def cell_owner_ranges(self, partition, blocks: Sequence[int]) -> Dict[int, Tuple[int, int, int, int]]:
        """Cells (cubes) of each block, as index ranges [ci0, ci1) x [cj0, cj1) (all heights).

        A cell belongs to the block whose region holds its centre's ground position.
        """
        ranges = {}
        for b in blocks:
            bx, by = partition.cell(b)  # a grown city's blocks are not every grid cell
            ci = self._axis_cells(partition.x_edges.numpy(), 0, bx)
            cj = self._axis_cells(partition.y_edges.numpy(), 1, by)
            if ci[1] > ci[0] and cj[1] > cj[0]:
                ranges[b] = (ci[0], ci[1], cj[0], cj[1])
        return ranges

    def _axis_cells(self, edges: np.ndarray, axis: int, index: int) -> Tuple[int, int]:
        centres = self.origin[axis] + self.spacing * (np.arange(self.shape[axis] - 1) + 0.5)
        column = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, len(edges) - 2)
        mine = np.nonzero(column == index)[0]
        return (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)


@torch.no_grad()
def routed_density(model, points_world: np.ndarray) -> np.ndarray:
    """Density [N] of the city at world points, each answered by the block whose region holds it."""
    points = torch.from_numpy(points_world.astype(np.float32))
    return model.density_at(points)[:, 0].numpy()


class LatticeDensity:
    """Density on the lattice, evaluated in globally aligned tiles of columns.

    Why tiles: a batched network evaluation is not guaranteed to give bit-identical results for
    one point in two different batches. Evaluating every lattice point in the same fixed tile,
    whichever block asks, gives border points the same value on both sides of a block border.
    """

    def __init__(self, model, partition, lattice: CityLattice, max_points_per_tile: int = 1 << 17):
        self.model, self.partition, self.lattice = model, partition, lattice
        self.tile = max(1, int(math.sqrt(max_points_per_tile / lattice.shape[2])))

    def _tile(self, ti: int, tj: int) -> np.ndarray:
        lat, t = self.lattice, self.tile
        i = np.arange(ti * t, min((ti + 1) * t, lat.shape[0]))
        j = np.arange(tj * t, min((tj + 1) * t, lat.shape[1]))
        k = np.arange(lat.shape[2])
        ii, jj, kk = np.meshgrid(i, j, k, indexing="ij")
        world = city_to_world(self.partition, lat.points_city(ii, jj, kk).reshape(-1, 3))
        return routed_density(self.model, world).reshape(ii.shape)

    def block(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """Density at lattice points [i0, i1) x [j0, j1) x all heights, float32."""
        t = self.tile
        out = np.empty((i1 - i0, j1 - j0, self.lattice.shape[2]), dtype=np.float32)
        for ti in range(i0 // t, (i1 - 1) // t + 1):
            for tj in range(j0 // t, (j1 - 1) // t + 1):
                values = self._tile(ti, tj)
                a0, b0 = max(i0, ti * t), max(j0, tj * t)
                a1, b1 = min(i1, ti * t + values.shape[0]), min(j1, tj * t + values.shape[1])
                out[a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = values[a0 - ti * t : a1 - ti * t, b0 - tj * t : b1 - tj * t]
        return out


# ---------------------------------------------------------------------------------- marching cubes
@dataclass
class MeshPart:
    """Triangles of some lattice cells: vertex weld keys [V], positions in global lattice
    index coordinates [V, 3] (float64), outward normals [V, 3], faces [F, 3] into the vertices."""

    keys: np.ndarray
    positions: np.ndarray
    normals: np.ndarray
    faces: np.ndarray

    @classmethod
    def empty(cls) -> "MeshPart":
        return cls(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), np.int64))


def march_volume(volume: np.ndarray, offset: Tuple[int, int, int], lattice_shape: Tuple[int, int, int], level: float) -> MeshPart:
    """skimage marching cubes on a sub-volume whose point (0, 0, 0) is lattice point `offset`.

    Each vertex gets a weld key from the lattice edge it lies on, and its position is recomputed
    in float64 from the edge's two end values. skimage works in float32 local coordinates, so the
    same vertex seen from two blocks (different local offsets) differs in its last bits; the
    recomputed position depends only on the edge, hence is identical. Vertices within 1e-3 of
    a lattice point are snapped to it (keyed by the point), which also makes the key of a vertex
    whose float32 position rounded onto a lattice point agree with its neighbour's.
    """
    from skimage.measure import marching_cubes

    if volume.min() >= level or volume.max() <= level or min(volume.shape) < 2:
        return MeshPart.empty()
    verts, faces, normals, _ = marching_cubes(volume, level=level, allow_degenerate=False)
    local = verts.astype(np.float64)
    nearest = np.round(local)
    off = np.abs(local - nearest)
    axis = np.argmax(off, axis=1)
    rows = np.arange(len(local))
    lower = nearest.astype(np.int64)
    lower[rows, axis] = np.floor(local[rows, axis]).astype(np.int64)
    upper = lower.copy()
    upper[rows, axis] += 1
    on_point = off.max(axis=1) == 0.0  # float32 rounding put it exactly on a lattice point
    upper = np.minimum(upper, np.array(volume.shape) - 1)
    v0 = volume[lower[:, 0], lower[:, 1], lower[:, 2]].astype(np.float64)
    v1 = volume[upper[:, 0], upper[:, 1], upper[:, 2]].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(v1 != v0, (level - v0) / (v1 - v0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    snap_low = on_point | (t < 1e-3)
    snap_high = ~on_point & (t > 1 - 1e-3)
    point = np.where(snap_high[:, None], upper, lower)
    point = np.where(on_point[:, None], nearest.astype(np.int64), point)

    snapped = snap_low | snap_high
    key_corner = np.where(snapped[:, None], point, lower) + np.asarray(offset)  # global lattice indices
    positions = key_corner.astype(np.float64)  # from global indices: the same bits in every block
    positions[rows, axis] += np.where(snapped, 0.0, t)
    key_axis = np.where(snapped, NOT_A_POINT, axis)
    nx, ny, nz = lattice_shape
    keys = ((key_corner[:, 0] * ny + key_corner[:, 1]) * nz + key_corner[:, 2]) * 4 + key_axis
    # skimage winds faces clockwise seen from low values (outside, for a density): flip them.
    return MeshPart(keys, positions, normals.astype(np.float64), faces[:, [0, 2, 1]].astype(np.int64))


def weld(parts: Sequence[MeshPart]) -> MeshPart:
    """One mesh from parts: vertices with the same key merged; faces made degenerate, or made
    copies of another face, by snapping to lattice points dropped (the same rule for any split)."""
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        return MeshPart.empty()
    keys = np.concatenate([p.keys for p in parts])
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    bases = np.cumsum([0] + [len(p.keys) for p in parts[:-1]])
    faces = inverse[np.concatenate([p.faces + base for p, base in zip(parts, bases)])]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[keep]
    # order-independent identity of a face: its weld keys, sorted (so the kept copy does not
    # depend on how the lattice was split into blocks)
    _, first_face = np.unique(np.sort(unique[faces], axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first_face)]
    positions = np.concatenate([p.positions for p in parts])[first]
    normals = np.concatenate([p.normals for p in parts])[first]
    return MeshPart(unique, positions, normals, faces)


def block_meshes(
    density: LatticeDensity,
    cell_ranges: Dict[int, Tuple[int, int, int, int]],
    level: float,
    on_block: Optional[Callable[[int, MeshPart], None]] = None,
) -> List[MeshPart]:
    """Marching cubes block by block, each on its own cells plus the shared border planes."""
    parts = []
    for b, (ci0, ci1, cj0, cj1) in cell_ranges.items():
        # cells [c0, c1) have their corners at points [c0, c1]: the border plane is shared.
        volume = density.block(ci0, ci1 + 1, cj0, cj1 + 1)
        part = march_volume(volume, (ci0, cj0, 0), density.lattice.shape, level)
        parts.append(part)
        if on_block is not None:
            on_block(b, part)
    return parts


@torch.no_grad()
def surface_colors(model, points_world: np.ndarray, normals_world: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """RGB [N, 3] in [0, 1] of the owning block at surface points, seen head-on (against the normal)."""
    colors = np.zeros((len(points_world), 3), dtype=np.float32)
    for s in range(0, len(points_world), chunk):
        p = torch.from_numpy(points_world[s : s + chunk].astype(np.float32))
        d = -torch.nn.functional.normalize(torch.from_numpy(normals_world[s : s + chunk].astype(np.float32)), dim=-1)
        d = torch.where(d.norm(dim=-1, keepdim=True) > 0.5, d, torch.tensor([0.0, 0.0, -1.0]))
        colors[s : s + chunk] = model.radiance_at(p, d).numpy()
    return colors


@dataclass
class Mesh:
    vertices: np.ndarray  # [V, 3] output frame
    faces: np.ndarray  # [F, 3]
    colors: np.ndarray  # [V, 3] uint8


def lattice_spacing(city: LoadedCity, resolution: Optional[float], cells_longest_side: int = 256) -> float:
    """Lattice spacing in nerfstudio units from --resolution (lattice cells per output-frame unit)."""
    if resolution is None:
        box = city.partition.city_box().numpy()
        return float(max(box[1, :2] - box[0, :2])) / cells_longest_side
    if resolution <= 0:
        raise ExportError(f"--resolution must be positive, got {resolution}")
    return city.frame.scale / resolution


def bbox_cell_ranges(
    city: LoadedCity, lattice: CityLattice, ranges: Dict[int, Tuple[int, int, int, int]], bbox: Optional[Sequence[float]]
) -> Dict[int, Tuple[int, int, int, int]]:
    """Cell ranges cut to the bbox's ground footprint (output frame); faces are cut exactly later."""
    if bbox is None:
        return ranges
    lo, hi = np.asarray(bbox[:3], float), np.asarray(bbox[3:], float)
    if np.any(hi <= lo):
        raise ExportError(f"--bbox: max must exceed min on every axis, got {list(bbox)}")
    corners = np.array([[(hi if (c >> a) & 1 else lo)[a] for a in range(3)] for c in range(8)])
    city_pts = city.partition.to_city(torch.from_numpy(city.frame.to_nerfstudio(corners))).numpy()
    c_lo = np.floor((city_pts.min(0) - lattice.origin) / lattice.spacing).astype(int)
    c_hi = np.ceil((city_pts.max(0) - lattice.origin) / lattice.spacing).astype(int)
    cells = np.array(lattice.shape) - 1
    c_lo, c_hi = np.maximum(c_lo, 0), np.minimum(c_hi, cells)
    if np.any(c_hi <= c_lo):
        box = city.frame.to_output(city_to_world(city.partition, city.partition.city_box().numpy()))
        raise ExportError(f"--bbox {list(bbox)} lies outside the city box (about {box.min(0).round(3).tolist()} .. {box.max(0).round(3).tolist()} in the {city.frame.name} frame)")
    cut = {}
    for b, (i0, i1, j0, j1) in ranges.items():
        i0, i1, j0, j1 = max(i0, c_lo[0]), min(i1, c_hi[0]), max(j0, c_lo[1]), min(j1, c_hi[1])
        if i1 > i0 and j1 > j0:
            cut[b] = (int(i0), int(i1), int(j0), int(j1))
    return cut


def export_mesh(
    city: LoadedCity,
    spacing: float,
    level: float,
    blocks: Sequence[int],
    bbox: Optional[Sequence[float]] = None,
    progress: bool = True,
) -> Tuple[Mesh, Dict]:
    """The stitched, coloured mesh of the given blocks (output frame) and a summary."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.time()
    lattice = CityLattice.over_city(city.partition, spacing)
    density = LatticeDensity(city.model, city.partition, lattice)
    ranges = bbox_cell_ranges(city, lattice, lattice.cell_owner_ranges(city.partition, blocks), bbox)
    per_block: Dict[int, Dict] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} blocks"),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("marching cubes", total=len(ranges))
        block_started = [time.time()]

        def on_block(b: int, part: MeshPart) -> None:
            per_block[b] = {"faces": int(len(part.faces)), "seconds": round(time.time() - block_started[0], 2)}
            bar.update(task, advance=1, description=f"marching cubes (block {b}: {len(part.faces):,} faces)")
            block_started[0] = time.time()

        parts = block_meshes(density, ranges, level, on_block)
    mesh = weld(parts)
    del parts
    world = city_to_world(city.partition, lattice.origin + lattice.spacing * mesh.positions)
    normals = city_to_world(city.partition, mesh.normals) - city.partition.origin.numpy()
    colors = surface_colors(city.model, world, normals)
    vertices = city.frame.to_output(world)
    faces = mesh.faces
    if bbox is not None:  # the lattice was cut to the bbox's cells; now cut exactly
        lo, hi = np.asarray(bbox[:3]), np.asarray(bbox[3:])
        centre = vertices[faces].mean(1)
        faces = faces[np.all((centre >= lo) & (centre <= hi), axis=1)]
    faces, vertices, colors = compact(faces, vertices, colors)
    summary = {
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
        "blocks": sorted(int(b) for b in ranges),
        "per_block": {str(b): v for b, v in per_block.items()},
        "lattice_points": list(lattice.shape),
        "lattice_spacing_nerfstudio_units": spacing,
        "lattice_spacing_output_units": spacing / city.frame.scale,
        "density_threshold": level,
        "frame": city.frame.name,
        "seconds": round(time.time() - started, 2),
    }
    return Mesh(vertices, faces, (np.clip(colors, 0, 1) * 255).round().astype(np.uint8)), summary


def compact(faces: np.ndarray, *per_vertex: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Drop vertices no face uses; returns (faces, *per_vertex arrays)."""
    used, faces = np.unique(faces, return_inverse=True)
    return (faces.reshape(-1, 3), *(a[used] for a in per_vertex))

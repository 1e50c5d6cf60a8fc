"""`mclnf-export`: what users take away from a trained city (mesh, point cloud, map, thumbnails).

    mclnf-export mesh        --load-config <run>/config.yml --output city.ply
    mclnf-export pointcloud  --load-config <run>/config.yml --output points.ply
    mclnf-export map         --load-config <run>/config.yml --output-dir map/
    mclnf-export thumbnails  --load-config <run>/config.yml --output blocks.png

Every subcommand loads the run with nerfstudio's `eval_setup` (finished blocks come from the
city store, `<run>/city`) and renders through the model's own routing and volume rendering.

Mesh, block by block, without cracks. One global lattice covers the city box (in the city
frame, where block regions are axis-aligned). Every lattice cube belongs to exactly one block
(the block whose region holds the cube's centre); a block runs marching cubes on its own cubes,
i.e. on its range of lattice points including the border planes it shares with its neighbours.
The density at a lattice point is the city's routed density (the point's owner by the
partition's rule), evaluated in fixed, globally aligned tiles, so a border point has bit for
bit the same value whichever block asks. Marching cubes is local to each cube, so the union of
the blocks' triangles is exactly the triangle set of one marching cubes over the whole lattice;
vertices are then welded by the lattice edge they lie on. Memory is bounded by one block.

Frames: outputs are written in the capture's own frame (the one of transforms.json: metres for
GPS or `mclnf-make-city` captures), undoing nerfstudio's dataparser transform, unless
`--frame nerfstudio` is given (the frame ns-export writes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mclnf_city.files import atomic_write, atomic_write_bytes, write_png, write_ply
from mclnf_city.store import DONE, CityStore, StoreError

NOT_A_POINT = 3  # weld key "axis" of a vertex that sits on a lattice point (not inside an edge)


class ExportError(RuntimeError):
    """Bad input to mclnf-export: the message names the file or option and the problem."""


# ---------------------------------------------------------------------------------- loading
@dataclass
class OutputFrame:
    """nerfstudio (dataparser) frame <-> output frame: p_ns = scale * (R p_out + t)."""

    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]
    scale: float
    name: str  # "capture" or "nerfstudio"

    @classmethod
    def identity(cls) -> "OutputFrame":
        return cls(np.eye(3), np.zeros(3), 1.0, "nerfstudio")

    @classmethod
    def from_dataparser_transforms(cls, path: Path) -> "OutputFrame":
        data = json.loads(Path(path).read_text())
        transform = np.asarray(data["transform"], dtype=np.float64)
        return cls(transform[:, :3], transform[:, 3], float(data["scale"]), "capture")

    def to_output(self, points_ns: np.ndarray) -> np.ndarray:
        return (points_ns / self.scale - self.translation) @ self.rotation  # R orthonormal: R^-1 = R^T

    def to_nerfstudio(self, points_out: np.ndarray) -> np.ndarray:
        return self.scale * (points_out @ self.rotation.T + self.translation)

    def dirs_to_output(self, directions_ns: np.ndarray) -> np.ndarray:
        return directions_ns @ self.rotation


@dataclass
class LoadedCity:
    config: object
    pipeline: object
    model: object
    partition: object
    store: CityStore
    frame: OutputFrame


def load_city(config_path: Path, frame: str = "capture") -> LoadedCity:
    """Load a finished (or partly finished) city with nerfstudio's eval_setup, after checking it."""
    import yaml

    config_path = Path(config_path)
    if not config_path.is_file():
        raise ExportError(f"--load-config {config_path}: no such file")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad config
        raise ExportError(f"--load-config {config_path}: cannot read the config: {e}") from e
    store_dir = getattr(getattr(config, "pipeline", None), "store_dir", None)
    if store_dir is None:
        raise ExportError(f"{config_path}: not an mclnf-city run (no pipeline.store_dir in the config)")
    try:
        store = CityStore(Path(store_dir))
    except StoreError as e:
        raise ExportError(str(e)) from e
    if not store.exists:
        raise ExportError(f"{store.manifest_path}: missing, this run has no trained city (was it trained to the end of a block?)")
    if not store.done_blocks():
        raise ExportError(f"{store.manifest_path}: no block is finished yet, nothing to export")
    ckpt_dir = config.get_checkpoint_dir()
    if not ckpt_dir.is_dir() or not list(ckpt_dir.glob("step-*.ckpt")):
        raise ExportError(f"{ckpt_dir}: no checkpoint (step-*.ckpt) found for {config_path}")

    from nerfstudio.utils.eval_utils import eval_setup

    try:
        config, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    except SystemExit as e:
        raise ExportError(f"{config_path}: nerfstudio could not load the run (exit {e.code})") from e
    except (StoreError, FileNotFoundError, ValueError) as e:
        raise ExportError(f"{config_path}: {e}") from e
    pipeline.eval()
    transforms = config_path.parent / "dataparser_transforms.json"
    if frame == "capture":
        if not transforms.exists():
            raise ExportError(f"{transforms}: missing, cannot write in the capture frame (use --frame nerfstudio)")
        out_frame = OutputFrame.from_dataparser_transforms(transforms)
    else:
        out_frame = OutputFrame.identity()
    return LoadedCity(config, pipeline, pipeline.model, pipeline.partition, pipeline.store, out_frame)


def finished_blocks(city: LoadedCity, asked: Optional[Sequence[int]]) -> List[int]:
    """The blocks to export: `asked` (each must exist and be finished), else every finished block."""
    n = city.partition.num_blocks
    done = sorted(city.store.done_blocks())
    if asked is None:
        unfinished = [b for b in range(n) if b not in done]
        if unfinished:
            statuses = ", ".join(f"{b} ({city.store.status(b)})" for b in unfinished)
            print(f"[mclnf-export] blocks not finished, left out: {statuses}")
        return done
    if len(asked) == 0:
        raise ExportError("--blocks: empty list (give block ids, or leave --blocks out for every finished block)")
    for b in asked:
        if not 0 <= b < n:
            raise ExportError(f"--blocks: block {b} does not exist (the city has blocks 0..{n - 1})")
        if b not in done:
            raise ExportError(f"--blocks: block {b} is not finished (status {city.store.status(b)}) in {city.store.manifest_path}")
    return sorted(set(asked))


# ---------------------------------------------------------------------------------- lattice
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


def city_to_world(partition, points_city: np.ndarray) -> np.ndarray:
    """City frame -> nerfstudio world frame (the partition's frame is a rotation about its origin)."""
    rotation = partition.rotation.numpy()
    return points_city @ rotation + partition.origin.numpy()


@torch.no_grad()
def routed_density(model, points_world: np.ndarray) -> np.ndarray:
    """Density [N] of the city at world points, each answered by the block whose region holds it."""
    points = torch.from_numpy(points_world.astype(np.float32))
    (density,) = model._evaluate_points(points, None, None)
    return density[:, 0].numpy()


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
        _, rgb = model._evaluate_points(p, d, None)
        colors[s : s + chunk] = rgb.numpy()
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


# ---------------------------------------------------------------------------------- point cloud
def select_cameras(city: LoadedCity, split: str, max_cameras: Optional[int]):
    """Cameras of the train or test split (or both), evenly thinned to at most max_cameras."""
    from nerfstudio.cameras.cameras import Cameras

    dm = city.pipeline.datamanager
    sets = {"train": [dm.train_dataset.cameras], "test": [dm.eval_dataset.cameras]}
    sets["all"] = sets["train"] + sets["test"]
    cams = sets[split]
    c2w = torch.cat([c.camera_to_worlds for c in cams])
    fields = {k: torch.cat([getattr(c, k) for c in cams]) for k in ("fx", "fy", "cx", "cy", "width", "height")}
    if len(c2w) == 0:
        raise ExportError(f"--cameras {split}: the capture has no cameras in that split")
    pick = np.arange(len(c2w))
    if max_cameras is not None and max_cameras < len(c2w):
        pick = np.unique(np.linspace(0, len(c2w) - 1, max_cameras).round().astype(int))
    return Cameras(camera_to_worlds=c2w[pick], **{k: v[pick] for k, v in fields.items()})


@torch.no_grad()
def export_pointcloud(
    city: LoadedCity, num_points: int, split: str, max_cameras: Optional[int], downscale: int,
    min_opacity: float, bbox: Optional[Sequence[float]], seed: int = 0, progress: bool = True,
) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Points where camera rays end (expected depth), with their rendered colour, output frame.

    Only rays that hit something (accumulated opacity >= min_opacity) give a point: the far
    field (sky) never does. Points are a uniform random subset of all candidates (a running
    top-k on random keys, so memory stays at num_points whatever the number of cameras).
    """
    from rich.progress import track

    if num_points <= 0:
        raise ExportError(f"--num-points must be positive, got {num_points}")
    started = time.time()
    cameras = select_cameras(city, split, max_cameras)
    if downscale > 1:
        cameras.rescale_output_resolution(1.0 / downscale)
    rng = np.random.default_rng(seed)
    keep_xyz, keep_rgb, keep_key = np.zeros((0, 3)), np.zeros((0, 3), np.float32), np.zeros(0)
    candidates = 0
    for c in track(range(len(cameras)), description="rendering cameras", disable=not progress):
        camera = cameras[c : c + 1]
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        out = city.model.get_outputs_for_camera_ray_bundle(rays)
        hit = (out["accumulation"][..., 0] >= min_opacity).numpy()
        xyz = (rays.origins + rays.directions * out["depth"]).numpy()[hit].astype(np.float64)
        xyz = city.frame.to_output(xyz)
        rgb = out["rgb"].numpy()[hit]
        if bbox is not None:
            inside = np.all((xyz >= np.asarray(bbox[:3])) & (xyz <= np.asarray(bbox[3:])), axis=1)
            xyz, rgb = xyz[inside], rgb[inside]
        candidates += len(xyz)
        keys = rng.random(len(xyz))
        keep_xyz, keep_rgb, keep_key = np.concatenate([keep_xyz, xyz]), np.concatenate([keep_rgb, rgb]), np.concatenate([keep_key, keys])
        if len(keep_key) > num_points:
            top = np.argpartition(keep_key, num_points)[:num_points]
            keep_xyz, keep_rgb, keep_key = keep_xyz[top], keep_rgb[top], keep_key[top]
    if len(keep_xyz) == 0:
        raise ExportError(f"no camera ray hit a surface (opacity >= {min_opacity}{' inside --bbox' if bbox else ''}): nothing to write")
    colors = (np.clip(keep_rgb, 0, 1) * 255).round().astype(np.uint8)
    summary = {"points": int(len(keep_xyz)), "candidates": candidates, "cameras": len(cameras), "split": split,
               "frame": city.frame.name, "seconds": round(time.time() - started, 2)}
    return keep_xyz, colors, summary


# ---------------------------------------------------------------------------------- map
def down_rays(city: LoadedCity, pixel_size: float, bbox: Optional[Sequence[float]]):
    """Orthographic rays straight down (along -up of the city frame) on a pixel grid over the
    city box (or the bbox's ground footprint). Row 0 is the city's +y edge (north up when the
    capture frame is east-north-up), column 0 its -x edge. Returns (RayBundle [H, W], xy grid)."""
    from nerfstudio.cameras.rays import RayBundle

    box = city.partition.city_box().numpy()
    lo, hi = box[0, :2].copy(), box[1, :2].copy()
    if bbox is not None:
        corners = np.array([[(bbox[3 + a] if (c >> a) & 1 else bbox[a]) for a in range(3)] for c in range(8)], float)
        city_pts = city.partition.to_city(torch.from_numpy(city.frame.to_nerfstudio(corners))).numpy()
        lo, hi = np.maximum(lo, city_pts.min(0)[:2]), np.minimum(hi, city_pts.max(0)[:2])
        if np.any(hi <= lo):
            raise ExportError(f"--bbox {list(bbox)} lies outside the city box")
    step = pixel_size  # nerfstudio units
    width, height = int(math.ceil((hi[0] - lo[0]) / step)), int(math.ceil((hi[1] - lo[1]) / step))
    if width * height > 16_000_000:
        raise ExportError(f"--resolution gives a {width}x{height} map: too large (at most 16 Mpixel)")
    if width < 1 or height < 1:
        raise ExportError("--resolution larger than the city: the map would be empty")
    x = lo[0] + (np.arange(width) + 0.5) * step
    y = hi[1] - (np.arange(height) + 0.5) * step
    xx, yy = np.meshgrid(x, y)
    top = box[1, 2] + 0.01 * (box[1, 2] - box[0, 2])  # just above the city box
    origins_city = np.stack([xx, yy, np.full_like(xx, top)], axis=-1)
    origins = city_to_world(city.partition, origins_city)
    down = city_to_world(city.partition, np.array([0.0, 0.0, -1.0])) - city.partition.origin.numpy()
    o = torch.from_numpy(origins.astype(np.float32))
    d = torch.from_numpy(np.broadcast_to(down, origins.shape).astype(np.float32).copy())
    bundle = RayBundle(
        origins=o, directions=d, pixel_area=torch.full((height, width, 1), step * step),
        camera_indices=torch.zeros((height, width, 1), dtype=torch.long),
    )
    return bundle, (lo, hi)


@torch.no_grad()
def export_map(city: LoadedCity, pixel_size_out: float, min_opacity: float, bbox: Optional[Sequence[float]]):
    """Bird's-eye orthographic RGB [H, W, 3] uint8, height [H, W] float32 (z of the surface in the
    output frame, NaN where no surface), and the map's metadata."""
    if pixel_size_out <= 0:
        raise ExportError(f"--resolution must be positive, got {pixel_size_out}")
    started = time.time()
    bundle, (lo, hi) = down_rays(city, pixel_size_out * city.frame.scale, bbox)
    out = city.model.get_outputs_for_camera_ray_bundle(bundle)
    rgb = (np.clip(out["rgb"].numpy(), 0, 1) * 255).round().astype(np.uint8)
    hit_ns = (bundle.origins + bundle.directions * out["depth"]).numpy().astype(np.float64)
    z = city.frame.to_output(hit_ns.reshape(-1, 3))[:, 2].reshape(hit_ns.shape[:2]).astype(np.float32)
    height = np.where(out["accumulation"][..., 0].numpy() >= min_opacity, z, np.nan).astype(np.float32)
    corners_city = np.array([[lo[0], hi[1], 0.0], [hi[0], hi[1], 0.0], [lo[0], lo[1], 0.0], [hi[0], lo[1], 0.0]])
    corners = city.frame.to_output(city_to_world(city.partition, corners_city))[:, :2]
    meta = {
        "frame": city.frame.name,
        "units_per_pixel": pixel_size_out,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "corners_xy": {"top_left": corners[0].tolist(), "top_right": corners[1].tolist(),
                       "bottom_left": corners[2].tolist(), "bottom_right": corners[3].tolist()},
        "pixels_with_surface": int(np.isfinite(height).sum()),
        "seconds": round(time.time() - started, 2),
    }
    return rgb, height, meta


def height_to_uint16(height: np.ndarray) -> Tuple[np.ndarray, Dict]:
    """16-bit height image: 0 = no surface, else z = z_min + (value - 1) * z_step."""
    finite = np.isfinite(height)
    if not finite.any():
        return np.zeros(height.shape, np.uint16), {"z_min": None, "z_step": None, "no_data": 0}
    z_min, z_max = float(height[finite].min()), float(height[finite].max())
    z_step = max(z_max - z_min, 1e-9) / 65534
    values = np.zeros(height.shape, np.uint16)
    values[finite] = (np.round((height[finite] - z_min) / z_step) + 1).astype(np.uint16)
    return values, {"z_min": z_min, "z_step": z_step, "no_data": 0, "formula": "z = z_min + (value - 1) * z_step"}


# ---------------------------------------------------------------------------------- thumbnails
def look_at_block(city: LoadedCity, b: int, width: int, height: int, elevation_deg: float = 45.0, fov_deg: float = 60.0):
    """A pinhole camera (nerfstudio frame) looking down at block b's centre from the south."""
    from nerfstudio.cameras.cameras import Cameras

    region = city.partition.regions()[b].numpy()
    centre = region.mean(0)
    centre[2] = region[0, 2] + 0.25 * (region[1, 2] - region[0, 2])
    half = 0.5 * float(np.max(region[1, :2] - region[0, :2]))
    distance = half / math.tan(math.radians(fov_deg / 2))  # the block's width fills the view
    e = math.radians(elevation_deg)
    eye = centre + distance * np.array([0.0, -math.cos(e), math.sin(e)])
    back = (eye - centre) / np.linalg.norm(eye - centre)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w_city = np.stack([right, up, back, eye], axis=1)  # columns, city frame
    rotation = city.partition.rotation.numpy()
    c2w = np.concatenate([rotation.T @ c2w_city[:, :3], city_to_world(city.partition, eye)[:, None]], axis=1)
    focal = 0.5 * width / math.tan(math.radians(fov_deg / 2))
    return Cameras(camera_to_worlds=torch.from_numpy(c2w[None].astype(np.float32)), fx=focal, fy=focal,
                   cx=width / 2, cy=height / 2, width=width, height=height)


@torch.no_grad()
def export_thumbnails(city: LoadedCity, tile_width: int, tile_height: int, progress: bool = True) -> Tuple[np.ndarray, Dict]:
    """One tile per block, laid out like the city grid (+y up, +x right), labelled id and status."""
    from PIL import Image, ImageDraw
    from rich.progress import track

    if tile_width < 16 or tile_height < 16:
        raise ExportError(f"--tile-size must be at least 16x16, got {tile_width}x{tile_height}")
    nx, ny = city.partition.grid
    sheet = Image.new("RGB", (nx * tile_width, ny * tile_height), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    statuses = {}
    for b in track(range(city.partition.num_blocks), description="rendering blocks", disable=not progress):
        status = city.store.status(b)
        statuses[str(b)] = status
        bx, by = city.partition.cell(b)  # a grown city leaves some grid cells without a block
        x0, y0 = bx * tile_width, (ny - 1 - by) * tile_height
        if status == DONE:
            out = city.model.get_outputs_for_camera(look_at_block(city, b, tile_width, tile_height))
            tile = (np.clip(out["rgb"].numpy(), 0, 1) * 255).round().astype(np.uint8)
            sheet.paste(Image.fromarray(tile), (x0, y0))
        label = f"block {b}: {status}"
        draw.rectangle([x0, y0, x0 + 7 * len(label) + 6, y0 + 14], fill=(0, 0, 0))
        draw.text((x0 + 3, y0 + 2), label, fill=(255, 255, 255) if status == DONE else (255, 200, 0))
        draw.rectangle([x0, y0, x0 + tile_width - 1, y0 + tile_height - 1], outline=(255, 255, 255))
    return np.asarray(sheet), {"blocks": statuses, "grid": [nx, ny], "tile_size": [tile_width, tile_height]}


# ---------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mclnf-export",
        description="Export a trained mclnf-city run: mesh, point cloud, bird's-eye map, block thumbnails. "
        "Coordinates are in the capture's frame (transforms.json; metres for GPS or make_city captures) "
        "unless --frame nerfstudio is given.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{mesh,pointcloud,map,thumbnails}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--load-config", type=Path, required=True, help="config.yml of the run (the city store is <run>/city)")
        p.add_argument("--frame", choices=["capture", "nerfstudio"], default="capture",
                       help="output coordinates: the capture's frame (default) or nerfstudio's normalised frame")
        p.add_argument("--bbox", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                       help="only export what lies in this box (output frame); default: the whole city")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("mesh", help="triangle mesh of the density field (marching cubes, block by block, stitched)",
                       description="Marching cubes on the city's density, one block at a time over one global lattice "
                       "(memory bounded by one block), stitched into one mesh without cracks or duplicated faces "
                       "(vertices welded by lattice edge), coloured by the owning block seen head-on. "
                       "Only density makes geometry: the far-field (sky) heads never do.")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PLY file to write (vertex colours, triangles)")
    p.add_argument("--resolution", type=float, default=None,
                   help="lattice cells per unit of the output frame (per metre for a metric capture); "
                   "default: 256 cells along the city's longest side")
    p.add_argument("--density-threshold", type=float, default=10.0,
                   help="iso-level of the density, in nerfstudio units (1 / normalised scene length); 10 measured best of 5, 10, 20 on generated cities (default: 10)")
    p.add_argument("--blocks", type=int, nargs="*", default=None, help="block ids to mesh (default: every finished block)")

    p = sub.add_parser("pointcloud", help="points where camera rays end (rendered depth), with colours")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PLY file to write (points with colours)")
    p.add_argument("--num-points", type=int, default=1_000_000, help="points to keep, a uniform random subset (default: 1000000)")
    p.add_argument("--cameras", choices=["train", "test", "all"], default="train", help="which cameras to render (default: train)")
    p.add_argument("--max-cameras", type=int, default=None, help="render at most this many cameras, evenly spread (default: all)")
    p.add_argument("--downscale", type=int, default=1, help="render cameras at 1/N resolution (default: 1)")
    p.add_argument("--min-opacity", type=float, default=0.5,
                   help="a ray gives a point only if its accumulated opacity is at least this (skips sky) (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset (default: 0)")

    p = sub.add_parser("map", help="bird's-eye orthographic RGB and height map of the city")
    common(p)
    p.add_argument("--output-dir", type=Path, required=True,
                   help="folder for rgb.png, height.npy (float32, NaN = no surface), height.png (16-bit) and map.json")
    p.add_argument("--resolution", type=float, default=None,
                   help="output-frame units per pixel (metres per pixel for a metric capture); default: 512 pixels along the longest side")
    p.add_argument("--min-opacity", type=float, default=0.5, help="pixels below this accumulated opacity have no height (default: 0.5)")

    p = sub.add_parser("thumbnails", help="one rendered tile per block, laid out as the block grid, labelled id and status")
    common(p)
    p.add_argument("--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--tile-size", type=int, nargs=2, default=[192, 144], metavar=("W", "H"), help="tile size in pixels (default: 192 144)")
    return parser


@torch.no_grad()  # scoped, not torch.set_grad_enabled(False): main() also runs inside other programs (tests)
def run(args: argparse.Namespace) -> Dict:
    from rich.console import Console

    console = Console(stderr=False)
    city = load_city(args.load_config, args.frame)
    progress = not args.quiet
    if args.command == "mesh":
        blocks = finished_blocks(city, args.blocks)
        spacing = lattice_spacing(city, args.resolution)
        mesh, summary = export_mesh(city, spacing, args.density_threshold, blocks, args.bbox, progress)
        if len(mesh.faces) == 0:
            raise ExportError(f"no surface at density {args.density_threshold} in blocks {blocks}: nothing to write (try a lower --density-threshold)")
        write_ply(args.output, mesh.vertices, mesh.colors, mesh.faces)
        summary["output"] = str(args.output)
        console.print(f"[bold green]mesh[/bold green] {args.output}: {summary['vertices']:,} vertices, {summary['faces']:,} faces, "
                      f"blocks {summary['blocks']}, lattice {summary['lattice_points']}, {summary['seconds']} s")
    elif args.command == "pointcloud":
        xyz, colors, summary = export_pointcloud(city, args.num_points, args.cameras, args.max_cameras, args.downscale,
                                                 args.min_opacity, args.bbox, args.seed, progress)
        write_ply(args.output, xyz, colors)
        summary["output"] = str(args.output)
        console.print(f"[bold green]point cloud[/bold green] {args.output}: {summary['points']:,} points from "
                      f"{summary['cameras']} cameras, {summary['seconds']} s")
    elif args.command == "map":
        if args.resolution is None:
            box = city.frame.to_output(city_to_world(city.partition, city.partition.city_box().numpy()))
            args.resolution = float(np.max(np.abs(box[1, :2] - box[0, :2]))) / 512
        rgb, height, summary = export_map(city, args.resolution, args.min_opacity, args.bbox)
        height16, scale = height_to_uint16(height)
        summary["height_png"] = scale
        summary["height_npy"] = "float32 z of the surface in the output frame, NaN where no surface"
        out = Path(args.output_dir)
        write_png(out / "rgb.png", rgb)
        atomic_write(out / "height.npy", lambda tmp: np.save(open(tmp, "wb"), height))
        write_png(out / "height.png", height16)
        atomic_write_bytes(out / "map.json", json.dumps(summary, indent=1).encode())
        console.print(f"[bold green]map[/bold green] {out}: {summary['width']}x{summary['height']} pixels at "
                      f"{args.resolution:g} units/pixel, {summary['pixels_with_surface']:,} with a surface, {summary['seconds']} s")
    elif args.command == "thumbnails":
        sheet, summary = export_thumbnails(city, args.tile_size[0], args.tile_size[1], progress)
        write_png(args.output, sheet)
        console.print(f"[bold green]thumbnails[/bold green] {args.output}: {sheet.shape[1]}x{sheet.shape[0]} pixels, "
                      f"{len(summary['blocks'])} blocks")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"mclnf-export {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

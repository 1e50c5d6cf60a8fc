"""Which training pixels each block learns from, computed once and kept with the city.

A pixel belongs to a block when its ray crosses the block's expanded box. The assignment
is built one image at a time (set-up memory is one image's rays, whatever the capture) and
written to ``<store>/pixels/``::

    index.json         fingerprint of the capture and partition; per block its images, and per
                       image its pixel and run counts
    block_007.runs     the block's pixels as runs (first pixel id y * width + x, length) of
                       consecutive ids, image after image, little-endian int32 pairs

A block's box projects to a convex region of a pinhole image, so an image holds about one run
per row of the block's window: the index costs bytes per row, not per pixel.

A block's pool (`BlockPool`) is read when the block starts: its pixel ids, and the colours
of those pixels from the images that see the block. Memory while training is bounded by the
largest block, not by the capture. A resumed run, a second process and a grown city reuse
the index when the fingerprint matches (same training cameras and images, same partition);
otherwise it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rich.progress import track
from torch import Tensor

from nerfstudio.cameras.cameras import CameraType

from mclnf_city.capture import CaptureError, load_image_uint8
from mclnf_city.capture.images import check_image_file
from mclnf_city.files import atomic_write_bytes, publish, staging_dir
from mclnf_city.partition import BlockPartition

INDEX_VERSION = 2


class PixelIndexError(RuntimeError):
    """A block's pixel file is missing, truncated or does not fit the capture."""


@dataclass
class TrainImages:
    """The training images as the pixel index sees them."""

    paths: List[Path]
    widths: Tensor
    """[N] int64"""
    heights: Tensor
    """[N] int64"""
    scale_factor: float = 1.0

    def check_files(self, what: str = "training") -> None:
        """Every image decodes to its end and has its camera's size, before any training."""
        for i in track(range(len(self.paths)), description=f"Checking the {what} images", transient=True):
            check_image_file(self.paths[i], (int(self.widths[i]), int(self.heights[i])), self.scale_factor)

    def load(self, i: int) -> Tensor:
        """Image i as [H * W, 3] uint8."""
        img = load_image_uint8(self.paths[i], self.scale_factor)
        h, w = int(self.heights[i]), int(self.widths[i])
        if img.shape[:2] != (h, w):
            raise CaptureError(f"{self.paths[i]}: image is {img.shape[1]}x{img.shape[0]} but its camera says {w}x{h}")
        return img.reshape(-1, 3)


@dataclass
class BlockPool:
    """The training pixels of one block, in a fixed order (image, then pixel id)."""

    block: int
    images: Tensor
    """[K] int64 training image ids, ascending"""
    starts: Tensor
    """[K + 1] int64: image k's pixels are pixels[starts[k]:starts[k + 1]]"""
    pixels: Tensor
    """[P] int32 pixel ids y * width + x"""
    colors: Tensor
    """[P, 3] uint8"""
    BYTES_PER_PIXEL = 7
    """an int32 id and three uint8 colours"""

    def __len__(self) -> int:
        return len(self.pixels)

    def indices(self, positions: Tensor, widths: Tensor) -> Tensor:
        """Pool positions [N] -> [N, 3] (camera, y, x), as nerfstudio's RayGenerator takes them."""
        cam = self.images[torch.searchsorted(self.starts, positions, right=True) - 1]
        local = self.pixels[positions].long()
        w = widths[cam]
        return torch.stack([cam, local // w, local % w], dim=-1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.starts, self.pixels, self.colors))


_BOX_EDGES = [(a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit]
"""The 12 edges of a box whose 8 corners are numbered by bits (x, y, z)."""


def candidate_windows(partition: BlockPartition, cameras, i: int, boxes: Optional[Tensor] = None) -> Dict[int, Tuple[int, int, int, int]]:
    """Per block, a pixel window (x0, x1, y0, y1) of camera i outside which no ray crosses the
    block's expanded box; blocks no ray of the camera reaches are left out.

    A ray that crosses a box meets it at a point in front of the camera, and projects to that
    point's pixel; so the crossing pixels lie in the projection of the box's part in front of
    the camera: the box cut at depth eps, a convex polytope whose vertices are the corners in
    front and the cuts of the box's edges. eps is small enough that no point of the box within
    the camera's view is nearer than eps (half the camera's distance to the box, over the
    view's widest ray slope). The window is the bounding rectangle of the vertices' pixels,
    grown by two pixels against rounding. A camera inside (or on) a box, or with lens
    distortion or another model, gets the whole image.
    """
    w, h = int(cameras.width[i]), int(cameras.height[i])
    boxes = partition.expanded_boxes() if boxes is None else boxes  # [B, 2, 3] city frame
    corners = torch.stack([boxes[:, [a & 1, (a >> 1) & 1, (a >> 2) & 1], [0, 1, 2]] for a in range(8)], dim=1)
    world = corners @ partition.rotation.double() + partition.origin.double()  # [B, 8, 3]
    c2w = cameras.camera_to_worlds[i].double()
    cam = (world - c2w[:, 3]) @ c2w[:, :3]  # camera frame: x right, y up, looking down -z
    distortion = cameras.distortion_params
    pinhole = int(cameras.camera_type[i]) == CameraType.PERSPECTIVE.value and (distortion is None or not bool((distortion[i] != 0).any()))
    fx, fy, cx, cy = (float(t[i]) for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    centre = partition.to_city(c2w[:, 3][None])[0]
    distance = torch.linalg.vector_norm(torch.clamp(torch.maximum(boxes[:, 0] - centre, centre - boxes[:, 1]), min=0), dim=-1)
    slope = math.sqrt(1 + (max(cx, w - cx) / fx) ** 2 + (max(cy, h - cy) / fy) ** 2)
    eps = (distance / (2 * slope))[:, None]  # [B, 1]
    a, b = torch.tensor(_BOX_EDGES).unbind(1)
    za, zb = cam[:, a, 2], cam[:, b, 2]  # [B, 12]
    cut = ((za + eps) * (zb + eps) < 0) & (distance[:, None] > 0)
    lam = ((-eps - za) / torch.where(cut, zb - za, torch.ones_like(za)))[..., None]
    points = torch.cat([cam, cam[:, a] + lam * (cam[:, b] - cam[:, a])], dim=1)  # [B, 20, 3]
    valid = torch.cat([cam[..., 2] <= -eps, cut], dim=1)
    z = torch.where(valid, points[..., 2], -torch.ones_like(points[..., 2]))
    u = torch.where(valid, cx + fx * points[..., 0] / -z, torch.nan)  # pixel x + 0.5
    v = torch.where(valid, cy + fy * points[..., 1] / z, torch.nan)  # pixel y + 0.5 (image y points down)
    u0, u1 = u.nan_to_num(math.inf).amin(1).tolist(), u.nan_to_num(-math.inf).amax(1).tolist()
    v0, v1 = v.nan_to_num(math.inf).amin(1).tolist(), v.nan_to_num(-math.inf).amax(1).tolist()
    inside, seen = (distance <= 0).tolist(), valid.any(1).tolist()
    windows: Dict[int, Tuple[int, int, int, int]] = {}
    for k in range(len(boxes)):
        if inside[k] or not pinhole:
            windows[k] = (0, w, 0, h)
        elif seen[k]:
            x0, x1 = max(0, math.floor(u0[k] - 0.5) - 2), min(w, math.ceil(u1[k] - 0.5) + 3)
            y0, y1 = max(0, math.floor(v0[k] - 0.5) - 2), min(h, math.ceil(v1[k] - 0.5) + 3)
            if x0 < x1 and y0 < y1:
                windows[k] = (x0, x1, y0, y1)
    return windows


def mask_to_runs(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Flat bool mask -> runs of consecutive True ids: (first id, length), both [R] int64."""
    edges = torch.diff(torch.nn.functional.pad(mask.to(torch.int8), (1, 1)))
    first, end = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return first, end - first


def runs_to_ids(first: Tensor, length: Tensor) -> Tensor:
    """Runs (first id, length) -> the ids they cover, in order, [sum(length)] int64."""
    offsets = torch.cumsum(length, 0) - length
    return torch.arange(int(length.sum())) + torch.repeat_interleave(first - offsets, length)


def fingerprint(cameras, image_paths: Sequence[Path], partition: BlockPartition) -> str:
    """What the assignment depends on: the training cameras, their images and the block boxes."""
    h = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for p in image_paths:
        h.update(str(p).encode() + b"\0")
    for t in (cameras.camera_to_worlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height,
              cameras.camera_type, cameras.distortion_params if cameras.distortion_params is not None else torch.zeros(1)):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for t in (partition.rotation, partition.origin, partition.expanded_boxes()):
        h.update(t.detach().cpu().double().contiguous().numpy().tobytes())
    return h.hexdigest()


class PixelIndex:
    """Per block: the training images that see it, how many of their pixels, and the pixel file."""

    def __init__(self, root: Path, index: Dict):
        self.root, self._index = Path(root), index
        self.blocks: Dict[int, Dict] = {int(b): e for b, e in index["blocks"].items()}

    @property
    def fingerprint(self) -> str:
        return self._index["fingerprint"]

    def images(self, b: int) -> Tensor:
        return torch.tensor(self.blocks[b]["images"], dtype=torch.long)

    def counts(self, b: int) -> Tensor:
        return torch.tensor(self.blocks[b]["counts"], dtype=torch.long)

    def runs(self, b: int) -> Tensor:
        return torch.tensor(self.blocks[b]["runs"], dtype=torch.long)

    def num_pixels(self, b: int) -> int:
        return int(self.blocks[b]["pixels"])

    @classmethod
    def open(cls, root: Path) -> Optional["PixelIndex"]:
        """The index at `root`, or None when there is none (or it is not readable: it is rebuilt)."""
        path = Path(root) / "index.json"
        if not path.exists():
            return None
        try:
            index = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if index.get("version") != INDEX_VERSION:
            return None
        return cls(root, index)

    @classmethod
    def build(cls, root: Path, partition: BlockPartition, cameras, train: TrainImages, fp: str, chunk: int) -> "PixelIndex":
        """Assign every training pixel to the blocks its ray crosses, image by image, writing
        each block's pixel runs to its file as they come (staged, then published at once).

        Each ray is tested exactly (`BlockPartition.crossing_mask`) against every block whose
        window (`candidate_windows`, which surely holds all its crossing rays) holds its pixel."""
        from nerfstudio.model_components.ray_generators import RayGenerator

        root = Path(root)
        staged = staging_dir(root)
        nb = partition.num_blocks
        generator = RayGenerator(cameras)
        files = [open(staged / f"block_{b:03d}.runs", "wb") for b in range(nb)]
        images: List[List[int]] = [[] for _ in range(nb)]
        counts: List[List[int]] = [[] for _ in range(nb)]
        runs: List[List[int]] = [[] for _ in range(nb)]
        try:
            boxes = partition.expanded_boxes()
            for i in track(range(len(train.paths)), description="Assigning pixels to blocks", transient=True):
                windows = candidate_windows(partition, cameras, i, boxes)
                if not windows:
                    continue
                blocks, w = sorted(windows), int(train.widths[i])
                # rays once for the windows' union; each block tests the pixels of its own window
                x0, x1 = min(windows[b][0] for b in blocks), max(windows[b][1] for b in blocks)
                y0, y1 = min(windows[b][2] for b in blocks), max(windows[b][3] for b in blocks)
                masks = torch.zeros(len(blocks), int(train.heights[i]) * w, dtype=torch.bool)
                rows = max(1, chunk // (x1 - x0))
                for r0 in range(y0, y1, rows):
                    r1 = min(r0 + rows, y1)
                    yy, xx = torch.meshgrid(torch.arange(r0, r1), torch.arange(x0, x1), indexing="ij")
                    rays = generator(torch.stack([torch.full_like(yy, i), yy, xx], dim=-1).reshape(-1, 3))
                    origins = rays.origins.double().reshape(r1 - r0, x1 - x0, 3)
                    directions = rays.directions.double().reshape(r1 - r0, x1 - x0, 3)
                    for k, b in enumerate(blocks):
                        bx0, bx1, by0, by1 = windows[b]
                        ry0, ry1 = max(by0, r0) - r0, min(by1, r1) - r0
                        if ry0 >= ry1:
                            continue
                        cols = slice(bx0 - x0, bx1 - x0)
                        local = (yy[ry0:ry1, cols] * w + xx[ry0:ry1, cols]).flatten()
                        masks[k, local] = partition.crossing_mask(
                            origins[ry0:ry1, cols].reshape(-1, 3), directions[ry0:ry1, cols].reshape(-1, 3), blocks=[b])[:, 0]
                for b, mask in zip(blocks, masks):
                    if not mask.any():
                        continue
                    first, length = mask_to_runs(mask)
                    files[b].write(torch.stack([first, length], 1).to(torch.int32).numpy().astype("<i4").tobytes())
                    images[b].append(i)
                    counts[b].append(int(length.sum()))
                    runs[b].append(len(first))
        finally:
            for f in files:
                f.close()
        index = {
            "version": INDEX_VERSION,
            "fingerprint": fp,
            "blocks": {
                str(b): {"file": f"block_{b:03d}.runs", "images": images[b], "counts": counts[b], "runs": runs[b],
                         "pixels": int(sum(counts[b]))}
                for b in range(nb)
            },
        }
        atomic_write_bytes(staged / "index.json", json.dumps(index).encode())
        publish(staged, root, overwrite=True)
        return cls(root, index)

    def read_runs(self, b: int, train: TrainImages) -> Tuple[Tensor, Tensor]:
        """Block b's pixel runs (first id, length), [R] int64 each, checked against the index and
        the image sizes; image k's runs follow image k - 1's."""
        entry = self.blocks[b]
        path = self.root / Path(entry["file"]).name  # a name, never a path out of the index's folder
        if not path.exists():
            raise PixelIndexError(f"{path}: pixel file of block {b} missing")
        pairs = np.fromfile(path, dtype="<i4").astype(np.int32, copy=False)
        runs, counts, images = self.runs(b), self.counts(b), self.images(b)
        if len(pairs) != 2 * int(runs.sum()):
            raise PixelIndexError(f"{path}: holds {len(pairs) / 2:g} pixel runs, its index says {int(runs.sum())}")
        if len(images) and (bool((images < 0).any()) or bool((images >= len(train.paths)).any())):
            raise PixelIndexError(f"{self.root / 'index.json'}: block {b} names images outside the capture")
        first, length = torch.from_numpy(pairs.reshape(-1, 2)).long().unbind(1)
        limit = torch.repeat_interleave((train.widths * train.heights)[images], runs)
        if bool(((first < 0) | (length < 1) | (first + length > limit)).any()):
            raise PixelIndexError(f"{path}: pixel runs outside their images")
        per_image = torch.zeros(len(images), dtype=torch.long).index_add_(0, torch.repeat_interleave(torch.arange(len(images)), runs), length)
        if not torch.equal(per_image, counts):
            raise PixelIndexError(f"{path}: pixel runs do not add up to the counts in its index")
        return first, length

    def read_pixels(self, b: int, train: TrainImages) -> Tensor:
        """Block b's pixel ids [P] int32, image after image."""
        return runs_to_ids(*self.read_runs(b, train)).to(torch.int32)

    def load_pool(self, b: int, train: TrainImages, keep: Optional[Tensor] = None) -> BlockPool:
        """Block b's pixel ids and their colours, read from its images now (only the images in
        `keep`, when given). The pool is filled image by image into memory mapped for it alone,
        so no block-sized temporary is made and an evicted pool's memory goes back to the system
        (the process keeps its freed heap memory, see cpu_allocator.py)."""
        (first, length), images, counts, runs = self.read_runs(b, train), self.images(b), self.counts(b), self.runs(b)
        run_starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(runs, 0)]).tolist()
        chosen = torch.ones(len(images), dtype=torch.bool) if keep is None else torch.isin(images, keep)
        order = torch.nonzero(chosen).flatten().tolist()
        sizes = counts[chosen]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
        total = int(starts[-1])
        pixels, colors = mapped_tensor((total,), torch.int32), mapped_tensor((total, 3), torch.uint8)
        for j, k in enumerate(track(order, description=f"Reading block {b}'s images", transient=True)):
            ids = runs_to_ids(first[run_starts[k] : run_starts[k + 1]], length[run_starts[k] : run_starts[k + 1]])
            o0, o1 = int(starts[j]), int(starts[j + 1])
            pixels[o0:o1] = ids
            colors[o0:o1] = train.load(int(images[k]))[ids]
        return BlockPool(block=b, images=images[chosen], starts=starts, pixels=pixels, colors=colors)


def mapped_tensor(shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor in its own anonymous memory map: freed to the system with it."""
    count = math.prod(shape)
    size = count * torch.empty(0, dtype=dtype).element_size()
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=count).view(shape)

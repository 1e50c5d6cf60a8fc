"""Training rays of the active block, sampled in the main process.

nerfstudio's `ParallelDataManager` samples pixels in spawned workers, where the stream
state (which block is active) is invisible. This data manager caches every training
pixel once (uint8), assigns pixels to the blocks their rays cross, and samples the
active block's pixels directly. Evaluation reuses `VanillaDataManager` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
from rich.progress import track
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from mclnf_city.capture import CaptureError, load_image_uint8
from mclnf_city.fisher import ScoreBuffer
from mclnf_city.partition import BlockPartition


@dataclass
class CityDataManagerConfig(VanillaDataManagerConfig):
    """Samples the active block's training pixels in the main process."""

    _target: Type = field(default_factory=lambda: CityDataManager)
    dataparser: AnnotatedDataParserUnion = field(
        default_factory=lambda: NerfstudioDataParserConfig(eval_mode="interval", eval_interval=8, load_3D_points=True)
    )
    """Capture reader, a subcommand: nerfstudio-data (transforms.json) or colmap (images/ + model). Every 8th image is a test view."""
    train_num_rays_per_batch: int = 4096
    """Rays per training step (all from the active block)."""
    eval_num_rays_per_batch: int = 4096
    """Rays per evaluation step."""
    assignment_chunk: int = 1 << 18
    """Rays tested against the block boxes at once while assigning pixels."""
    seed: int = 0
    """Seed of the pixel sampler (the rays drawn at a block's step s depend only on seed, block and s)."""


class BlockPixelSampler:
    """Uniform draws from a pool of pixel ids; the draw at a block's step depends only on
    (seed, block, step), so a resumed run sees the rays it would have seen, and a block sees
    the same rays whichever process trains it."""

    def __init__(self, num_rays_per_batch: int, seed: int):
        self.num_rays_per_batch, self.seed = num_rays_per_batch, seed

    def generator(self, block: Optional[int], step: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.seed * 1_000_003) + (block if block is not None else -1) + 1) * 1_000_000_007 + step)

    def sample(self, pool_size: int, block: Optional[int], step: int) -> Tensor:
        return torch.randint(0, pool_size, (self.num_rays_per_batch,), generator=self.generator(block, step))


class CityDataManager(VanillaDataManager):
    config: CityDataManagerConfig

    def setup_train(self):
        """Cache every training pixel as uint8; pixels are assigned to blocks later."""
        from nerfstudio.model_components.ray_generators import RayGenerator

        dataset = self.train_dataset
        cameras = dataset.cameras
        self.widths = cameras.width.flatten().long()
        self.heights = cameras.height.flatten().long()
        sizes = self.widths * self.heights
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
        colors = torch.empty(int(self.offsets[-1]), 3, dtype=torch.uint8)
        for i, name in enumerate(track(dataset._dataparser_outputs.image_filenames, description="Caching training images", transient=True)):
            img = load_image_uint8(name, dataset.scale_factor)
            h, w = int(self.heights[i]), int(self.widths[i])
            if img.shape[:2] != (h, w):
                raise CaptureError(f"{name}: image is {img.shape[1]}x{img.shape[0]} but its camera says {w}x{h}")
            colors[self.offsets[i] : self.offsets[i + 1]] = img.reshape(-1, 3)
        self.colors = colors
        self.train_ray_generator = RayGenerator(cameras.to(self.device))
        self.block_pixels: Dict[int, Tensor] = {}
        self.active_block: Optional[int] = None
        # FIM-NeRF sampling (off unless the pipeline sets a uniform fraction): the active
        # block's per-pixel scores. Not checkpointed: a resumed block starts it afresh.
        self.fisher_uniform_fraction: Optional[float] = None
        self.score_buffer: Optional[Tuple[int, ScoreBuffer]] = None
        self.train_pixel_sampler = BlockPixelSampler(self.config.train_num_rays_per_batch, self.config.seed)

    # ----- pixels and blocks -----
    def flat_to_indices(self, flat: Tensor) -> Tensor:
        """Flat pixel ids -> [N, 3] (camera, y, x) as RayGenerator expects."""
        cam = torch.searchsorted(self.offsets, flat, right=True) - 1
        local = flat - self.offsets[cam]
        w = self.widths[cam]
        return torch.stack([cam, local // w, local % w], dim=-1)

    def assign_pixels(self, partition: BlockPartition) -> Dict[int, Tensor]:
        """For every block, the flat ids of the training pixels whose rays cross its expanded box."""
        hits: List[List[Tensor]] = [[] for _ in range(partition.num_blocks)]
        total = int(self.offsets[-1])
        chunk = self.config.assignment_chunk
        for start in track(range(0, total, chunk), description="Assigning pixels to blocks", transient=True):
            flat = torch.arange(start, min(start + chunk, total))
            rays = self.train_ray_generator(self.flat_to_indices(flat).to(self.device))
            crossing = partition.crossing_mask(rays.origins.cpu().double(), rays.directions.cpu().double())
            for b in range(partition.num_blocks):
                hits[b].append(flat[crossing[:, b]])
        self.block_pixels = {b: torch.cat(h) for b, h in enumerate(hits)}
        return self.block_pixels

    def block_images(self, b: int) -> Tensor:
        """Bool mask [num_train_images] of the images with pixels in block b."""
        mask = torch.zeros(len(self.widths), dtype=torch.bool)
        pixels = self.block_pixels.get(b)
        if pixels is not None and len(pixels):
            mask[torch.unique(self.flat_to_indices(pixels)[:, 0])] = True
        return mask

    def keep_images(self, b: int, images: Tensor) -> None:
        """Block b draws only from the pixels of these training images (indices)."""
        pool = self.block_pixels[b]
        self.block_pixels[b] = pool[torch.isin(self.flat_to_indices(pool)[:, 0], images)]

    def rays_per_block(self) -> Dict[int, int]:
        return {b: len(p) for b, p in self.block_pixels.items()}

    # ----- sampling -----
    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """Rays of the active block's draw number `step` (the pipeline passes the step within the block)."""
        self.train_count += 1
        positions = None
        if self.active_block is not None:
            pool = self.block_pixels[self.active_block]
            buffer = self._score_buffer()
            if buffer is not None:
                n = self.train_pixel_sampler.num_rays_per_batch
                positions = buffer.sample(n, self.train_pixel_sampler.generator(self.active_block, step))
            else:
                positions = self.train_pixel_sampler.sample(len(pool), self.active_block, step)
            pick = pool[positions]
        else:  # no stream running (export, inspection): any training pixel
            pick = self.train_pixel_sampler.sample(int(self.offsets[-1]), None, step)
        indices = self.flat_to_indices(pick)
        batch = {"image": self.colors[pick].float().div_(255.0).to(self.device), "indices": indices}
        if positions is not None:
            batch["pool_positions"] = positions
        return self.train_ray_generator(indices.to(self.device)), batch

    def _score_buffer(self) -> Optional[ScoreBuffer]:
        if self.fisher_uniform_fraction is None or self.active_block is None:
            return None
        if self.score_buffer is None or self.score_buffer[0] != self.active_block:
            pool = self.block_pixels[self.active_block]
            self.score_buffer = (self.active_block, ScoreBuffer(len(pool), self.fisher_uniform_fraction))
        return self.score_buffer[1]

    def record_scores(self, batch: Dict, scores: Tensor) -> None:
        """Refresh the active block's score buffer with the scores of the rays just trained on."""
        buffer = self._score_buffer()
        if buffer is not None and "pool_positions" in batch:
            buffer.update(batch["pool_positions"], scores)

    def get_train_rays_per_batch(self) -> int:
        return self.train_pixel_sampler.num_rays_per_batch

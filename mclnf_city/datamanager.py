"""Training rays of the active block, sampled in the main process.

nerfstudio's `ParallelDataManager` samples pixels in spawned workers, where the stream
state (which block is active) is invisible. This data manager keeps no image of the capture
in memory: the pixel index (`block_pixels.py`, kept with the city) says which pixels each
block learns from, and a block's pixels are read from its images when it starts. Memory is
bounded by the largest block. Evaluation reuses `VanillaDataManager`, with test views read
one at a time rather than all cached up front.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Type

import torch
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city.block_pixels import BlockPool, PixelIndex, TrainImages, fingerprint
from mclnf_city.fisher import FisherConfig, ScoreBuffer, score_groups
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
    eval_num_images_to_sample_from: int = 1
    """Test views held in memory for nerfstudio's evaluation batches (read one at a time; -1 caches all)."""
    eval_num_times_to_repeat_images: int = 1
    """Evaluation batches drawn from those views before others are read."""
    assignment_chunk: int = 1 << 18
    """Rays tested against the block boxes at once while assigning pixels."""
    pixel_cache_bytes: int = 1 << 30
    """Memory for the pixels (ids and colours) of blocks trained recently; the active block's are
    always kept. Blocks beyond it are read again from their images when they come back."""
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
        """No pixel is read here: blocks read theirs when they start (`index_pixels` first)."""
        from nerfstudio.model_components.ray_generators import RayGenerator

        dataset = self.train_dataset
        cameras = dataset.cameras
        self.widths = cameras.width.flatten().long()
        self.heights = cameras.height.flatten().long()
        self.train_images = self.image_files(dataset)
        self.train_ray_generator = RayGenerator(cameras.to(self.device))
        self.pixel_index: Optional[PixelIndex] = None
        self._kept_images: Dict[int, Tensor] = {}
        self._pools: "OrderedDict[int, BlockPool]" = OrderedDict()
        self.active_block: Optional[int] = None
        # FIM-NeRF sampling (off unless the pipeline sets its settings): the active
        # block's scores. Not checkpointed: a resumed block starts it afresh.
        self.fisher: Optional[FisherConfig] = None
        self.score_buffer: Optional[Tuple[int, ScoreBuffer]] = None
        self.train_pixel_sampler = BlockPixelSampler(self.config.train_num_rays_per_batch, self.config.seed)

    @staticmethod
    def image_files(dataset) -> TrainImages:
        cameras = dataset.cameras
        return TrainImages([Path(p) for p in dataset._dataparser_outputs.image_filenames],
                           cameras.width.flatten().long(), cameras.height.flatten().long(), dataset.scale_factor)

    def check_image_files(self) -> None:
        """Every training and test image decodes to its end and has its camera's size."""
        self.train_images.check_files()
        self.image_files(self.eval_dataset).check_files("test")

    # ----- pixels and blocks -----
    def index_pixels(self, partition: BlockPartition, root: Path, build: bool = True) -> PixelIndex:
        """Open the pixel index at `root` (the city's), or build it when it is missing or was made
        for other cameras, images or blocks. With `build=False` a missing or stale index is an error
        (a process that waits for another to build it)."""
        fp = fingerprint(self.train_dataset.cameras, self.train_images.paths, partition)
        index = PixelIndex.open(root)
        if index is None or index.fingerprint != fp:
            if not build:
                raise RuntimeError(f"{root}: no pixel index for this capture and partition")
            if index is not None:
                CONSOLE.print(f"pixel index at {root} was made for other cameras or blocks: rebuilding it")
            index = PixelIndex.build(root, partition, self.train_dataset.cameras, self.train_images, fp, self.config.assignment_chunk)
        self.pixel_index = index
        self._pools.clear()
        self.score_buffer = None
        return index

    def _index(self) -> PixelIndex:
        if self.pixel_index is None:
            raise RuntimeError("no pixel index: CityDataManager.index_pixels must run before blocks are sampled")
        return self.pixel_index

    def block_images(self, b: int) -> Tensor:
        """Bool mask [num_train_images] of the images with pixels in block b."""
        index = self._index()
        mask = torch.zeros(len(self.widths), dtype=torch.bool)
        images = index.images(b)[index.counts(b) > 0]
        if b in self._kept_images:
            images = images[torch.isin(images, self._kept_images[b])]
        mask[images] = True
        return mask

    def keep_images(self, b: int, images: Tensor) -> None:
        """Block b draws only from the pixels of these training images (indices)."""
        self._kept_images[b] = images.long()
        self._pools.pop(b, None)

    def rays_per_block(self) -> Dict[int, int]:
        index = self._index()
        rays = {}
        for b in index.blocks:
            counts = index.counts(b)
            if b in self._kept_images:
                counts = counts[torch.isin(index.images(b), self._kept_images[b])]
            rays[b] = int(counts.sum())
        return rays

    def pool(self, b: int) -> BlockPool:
        """Block b's pixels and colours: kept while they fit `pixel_cache_bytes`, else read again."""
        if b in self._pools:
            self._pools.move_to_end(b)
            return self._pools[b]
        # room first: the pools kept and the new one fit the budget together (the new one always loads)
        need = self._index().num_pixels(b) * BlockPool.BYTES_PER_PIXEL
        while self._pools and sum(p.nbytes for p in self._pools.values()) + need > self.config.pixel_cache_bytes:
            self._pools.popitem(last=False)
        pool = self._index().load_pool(b, self.train_images, self._kept_images.get(b))
        self._pools[b] = pool
        return pool

    # ----- sampling -----
    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        """Rays of the active block's draw number `step` (the pipeline passes the step within the block)."""
        self.train_count += 1
        if self.active_block is None:
            return self._any_training_rays()
        pool = self.pool(self.active_block)
        buffer = self._score_buffer()
        draw_probability = None
        if buffer is not None:
            n = self.train_pixel_sampler.num_rays_per_batch
            positions, draw_probability = buffer.sample(n, self.train_pixel_sampler.generator(self.active_block, step))
        else:
            positions = self.train_pixel_sampler.sample(len(pool), self.active_block, step)
        indices = pool.indices(positions, self.widths)
        batch = {"image": pool.colors[positions].float().div_(255.0).to(self.device), "indices": indices, "pool_positions": positions}
        if draw_probability is not None:
            batch["draw_probability"], batch["pool_size"] = draw_probability.to(self.device), len(pool)
        return self.train_ray_generator(indices.to(self.device)), batch

    def _any_training_rays(self) -> Tuple[RayBundle, Dict]:
        """No stream running (`ns-export pointcloud`, inspection): rays of up to 16 training images
        drawn at random, a new draw every call, read from disk (nothing of the capture is kept)."""
        gen = self.train_pixel_sampler.generator(None, self.train_count)
        n = self.train_pixel_sampler.num_rays_per_batch
        images = torch.randperm(len(self.widths), generator=gen)[:16]
        sizes = (self.widths * self.heights)[images]
        which = torch.multinomial(sizes.double(), n, replacement=True, generator=gen)
        local = (torch.rand(n, generator=gen, dtype=torch.float64) * sizes[which]).long()
        cam, w = images[which], self.widths[images[which]]
        colors = torch.zeros(n, 3, dtype=torch.uint8)
        for k, i in enumerate(images.tolist()):
            picked = which == k
            if picked.any():
                colors[picked] = self.train_images.load(i)[local[picked]]
        indices = torch.stack([cam, local // w, local % w], dim=-1)
        batch = {"image": colors.float().div_(255.0).to(self.device), "indices": indices}
        return self.train_ray_generator(indices.to(self.device)), batch

    def _score_buffer(self) -> Optional[ScoreBuffer]:
        if self.fisher is None or not self.fisher.sampling or self.active_block is None:
            return None
        if self.score_buffer is None or self.score_buffer[0] != self.active_block:
            pool, fisher = self.pool(self.active_block), self.fisher
            groups = None
            if fisher.granularity != "pixel":
                groups = score_groups(pool.indices(torch.arange(len(pool)), self.widths), fisher.granularity)
            self.score_buffer = (self.active_block, ScoreBuffer(len(pool), fisher.uniform_fraction, groups, fisher.score_decay))
        return self.score_buffer[1]

    def record_scores(self, batch: Dict, scores: Tensor) -> None:
        """Refresh the active block's score buffer with the scores of the rays just trained on."""
        buffer = self._score_buffer()
        if buffer is not None and "pool_positions" in batch:
            buffer.update(batch["pool_positions"], scores)

    def get_train_rays_per_batch(self) -> int:
        return self.train_pixel_sampler.num_rays_per_batch

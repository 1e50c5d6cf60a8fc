"""The streaming schedule: partition, then one block after another, each frozen when done.

Step s of training belongs to block ``stream[s // steps_per_block]`` (with several
processes, to the rank's share of the stream: see `mclnf_city/distributed.py`). When a block's
steps are over, the active slot is evaluated on the block's test views, written to the
`CityStore` (the commit point), kept frozen, and a checkpoint is saved; the next step
resets the active slot from θ_shared and clears the optimizer state. A run resumed
from any checkpoint therefore continues inside the block it was killed in, and never
retrains a block the store holds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import torch
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city import distributed, grow
from mclnf_city.capture import check_cameras, check_capture
from mclnf_city.datamanager import CityDataManagerConfig
from mclnf_city.fields import BlockField, BlockFieldSpec
from mclnf_city.fisher import FisherConfig, fisher_loss_weights
from mclnf_city.metrics import image_metrics, lpips_status
from mclnf_city.model import CityModelConfig
from mclnf_city.bounds import capture_bounds, save_bounds_figure
from mclnf_city.partition import check_camera_spread, look_blocks, partition_from_bounds, partition_table
from mclnf_city.files import atomic_write_bytes
from mclnf_city.store import ACTIVE, DONE, EMPTY, StoreError, load_checked, sha256
from mclnf_city.viewer import CityViewer


@dataclass
class MetaLearningConfig:
    """Meta-training of θ_shared on the capture's own blocks (tasks), before the stream."""

    meta_steps: int = 0
    """Outer (meta) steps; 0 streams straight from the prior."""
    algorithm: Literal["reptile", "fomaml", "maml"] = "reptile"
    """reptile (first order, cheap), fomaml, or maml (second order through the inner SGD loop)."""
    inner_steps: int = 8
    """Adaptation steps per task (each on its own batch of the block's rays)."""
    inner_lr: float = 1e-2
    """Inner learning rate (Adam for reptile, SGD for fomaml/maml)."""
    outer_lr: float = 0.5
    """Reptile's step size ε, or the (FO)MAML outer learning rate β."""
    tasks_per_batch: int = 2
    """Blocks per outer step."""
    seed: int = 0
    """Seed of the task and ray draws."""
    continual: bool = False
    """Meta-continual: after each block finishes, move θ_shared towards its weights (a Reptile step), so later blocks start from what earlier ones learned."""
    continual_epsilon: float = 0.2
    """Step size of the meta-continual update θ ← θ + ε (φ_block − θ)."""


@dataclass
class CityPipelineConfig(VanillaPipelineConfig):
    """Partition, stream and freeze: the MCL-NF training schedule."""

    _target: Type = field(default_factory=lambda: CityPipeline)
    datamanager: CityDataManagerConfig = field(default_factory=CityDataManagerConfig)
    """Reads the capture and samples the active block's rays."""
    model: CityModelConfig = field(default_factory=CityModelConfig)
    """The block fields and how rays are rendered."""
    grid: Tuple[int, int] = (2, 2)
    """Blocks along the city's x and y axes (ignored when --pipeline.block-size is given)."""
    block_size: Optional[float] = None
    """Block edge length in scene units; the number of blocks then follows from the capture's extent."""
    overlap: float = 0.15
    """Overlap margin on each side of a block, as a fraction of the block edge."""
    steps_per_block: int = 2000
    """Training steps of each block; ns-train runs (number of non-empty blocks) x this many steps."""
    lr_final_fraction: float = 0.1
    """Learning rate at the end of a block, as a fraction of its initial value (exponential decay)."""
    prior: str = "bundled"
    """θ_shared, where every block starts: 'bundled' (the prior meta-learned on generated cities and shipped with the package (mclnf_city/priors, linked from assets/priors) for this architecture; 'random' with a notice if none is), 'random' (the architecture's seeded init), or the path of a prior file."""
    prior_seed: int = 0
    """Seed of the 'random' prior."""
    min_rays_per_block: int = 1000
    """Blocks crossed by fewer training rays are skipped (marked empty, with a message)."""
    block_eval_max_pixels: int = 40_000
    """Per-block evaluation while streaming (each block's metrics when it finishes and at the end, and the forgetting check) renders the block's test views downscaled to at most this many pixels, so large photos do not make evaluation outweigh training. The city report's test renders stay at full resolution. 0: full resolution."""
    store_dir: Optional[Path] = None
    """The block store. Default: <run dir>/city (or the store of the run given with --load-dir)."""
    meta: MetaLearningConfig = field(default_factory=MetaLearningConfig)
    """Meta-learning of the shared initialisation θ_shared (MCL-NF)."""
    fisher: FisherConfig = field(default_factory=FisherConfig)
    """FIM-NeRF: Fisher-information ray scores driving loss weights and ray sampling."""
    up: Optional[Tuple[float, float, float]] = None
    """The up direction in the dataparser's frame (as printed at start). Default: estimated from the cameras; set it when the printed up axis or the city_bounds.png picture is wrong."""
    height_range: Optional[Tuple[float, float]] = None
    """Ground and top of the city box, as heights along up in the city frame (scene units, as printed at start). Default: estimated from the scene points (sparse points, else the depth probe), else a generous guess from the cameras."""
    ground_extent: Optional[Tuple[float, float, float, float]] = None
    """The city's ground rectangle in the city frame: x min, x max, y min, y max (scene units, as printed at start). Default: where the scene points are and where the cameras see the ground."""
    depth_probe: bool = True
    """Without sparse points in the capture, triangulate SIFT matches of up to 96 training images with their poses to find the scene (a few seconds); off: the cameras alone (a generous guess)."""
    max_camera_distance: float = 20.0
    """Cameras farther from the median camera than this many median camera distances are reported as broken poses."""
    blocks_per_wave: Optional[int] = None
    """Blocks trained side by side as one wave; a block sees (as frozen context) only blocks of earlier waves. Default: the number of processes (--machine.num-devices x --machine.num-machines), i.e. 1 on one process. One process with the value of a distributed run trains the same blocks."""
    grow_city: Optional[Path] = None
    """Grow a trained city: the store of the run that trained it (<old run>/city). --data is that city's capture grown by new photos (mclnf-process NEW OUT --register-into OLD_CAPTURE); blocks are added where the newest photos look beyond the city (same block size, height range and overlap) and only they train, from the city's stored prior. The old blocks are linked unchanged into this run's store and never retrained; the old run stays as it was."""
    recapture_blocks: Tuple[int, ...] = ()
    """With --pipeline.grow-city: re-capture these blocks instead of adding new ones. Each trains again, from the city's prior, on the newest photos only (the last capture registered into --data), as a new version (blocks/block_NNN_vK.pt); the old version stays in service until the new one is stored, and a run stopped before that leaves it in service."""


class CityPipeline(VanillaPipeline):
    config: CityPipelineConfig

    def __init__(
        self,
        config: CityPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        Pipeline.__init__(self)
        self.config, self.test_mode, self.world_size = config, test_mode, world_size
        self.rank = distributed.rank()
        if world_size > 1 and (config.grow_city is not None or config.recapture_blocks):
            raise ValueError("--pipeline.grow-city and --pipeline.recapture-blocks train on one process for now")
        data = config.datamanager.data or config.datamanager.dataparser.data
        check_capture(config.datamanager.dataparser, data)
        with grow.city_frame(config):  # a grown city's capture is parsed in the city's frame (grow.py)
            self.datamanager = config.datamanager.setup(device=device, test_mode=test_mode, world_size=1, local_rank=0)
        self.datamanager.to(device)
        outputs = self.datamanager.train_dataparser_outputs
        c2w = outputs.cameras.camera_to_worlds
        check_cameras(c2w, outputs.image_filenames)
        if config.store_dir is None:
            raise ValueError("--pipeline.store-dir is not set (ns-train mclnf-city sets it to <run dir>/city)")
        training = test_mode == "val"  # ns-train; ns-eval/ns-render/ns-export use "test"/"inference"
        self.store = grow.open_store(config, outputs, training)  # CityStore(config.store_dir) unless --pipeline.grow-city

        if training and world_size > 1:  # rank 0 creates the city, the others then read it
            if self.rank == 0 and not self.store.exists:
                self._create_city(config, data, outputs, c2w)
            distributed.barrier()
            self.store.refresh()
        if self.store.exists:
            partition = self.store.partition()
            expected = self.store.manifest["info"].get("num_train_images")
            if expected is not None and expected != len(c2w):
                raise StoreError(
                    f"{self.store.manifest_path}: the city was trained on {expected} images, this capture has {len(c2w)}"
                )
            self.store.verify()
        elif not training:
            raise StoreError(f"no trained city at {self.store.root} (manifest.json missing)")
        else:
            partition = self._create_city(config, data, outputs, c2w)
        self.partition = partition

        masks: Dict[int, torch.Tensor] = {}
        if training:
            if not self.datamanager.block_pixels:  # set by _create_city when this process made the city
                self.datamanager.assign_pixels(partition)
            masks = {b: self.datamanager.block_images(b) for b in range(partition.num_blocks)}
            if self.rank == 0:
                rays = {b: len(p) for b, p in self.datamanager.block_pixels.items()}
                images = {b: int(m.sum()) for b, m in masks.items()}
                CONSOLE.print(partition_table(partition, images, rays))
        self.stream: List[int] = [b for b in partition.stream_order if self.store.status(b) != EMPTY]
        grow.prepare_run(self, masks)  # a grown city's run: its own blocks only (no-op otherwise)
        if training and not self.stream:
            raise StoreError("every block is empty: no block has enough training rays to train")
        wave = config.blocks_per_wave or world_size
        if config.meta.continual and wave > 1:
            raise ValueError("--pipeline.meta.continual moves θ_shared after every block: it needs one block per wave")
        # This rank's blocks, one slot of steps_per_block steps each (None: waits for the wave's end).
        self.schedule = distributed.wave_schedule(self.stream, wave, self.rank, world_size)
        self.slots_per_wave = wave // world_size
        self.total_steps = len(self.schedule) * config.steps_per_block

        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
            partition=partition,
            store=self.store,
            prior=self._resolve_prior(len(self.datamanager.train_dataset)),
            block_image_masks=masks,
        )
        self.model.to(device)
        if training:
            if config.meta.meta_steps > 0 and not self._prior_meta().get("meta_trained"):
                self.meta_train()
            if config.meta.continual:
                self.absorb_finished_blocks()
            self.model.fisher_features = config.fisher.enabled
            if config.fisher.sampling:
                self.datamanager.fisher_uniform_fraction = config.fisher.uniform_fraction
        self._optimizers = None
        self._trainer = None
        self._block_started_at = time.time()
        # nerfstudio's viewer finds this ViewerControl on the pipeline and sets it up; without a
        # viewer (--vis tensorboard, ns-eval, ...) it stays a no-op.
        self.city_viewer = CityViewer(self)

    def _create_city(self, config: CityPipelineConfig, data, outputs, c2w):
        """Partition the capture, mark blocks with too few rays empty, and write the new store."""
        check_camera_spread(c2w, [str(n) for n in outputs.image_filenames], config.max_camera_distance)
        bounds, points = capture_bounds(
            outputs, up=config.up, height_range=config.height_range, ground_extent=config.ground_extent, depth_probe=config.depth_probe
        )
        partition = partition_from_bounds(bounds, c2w, config.grid, config.block_size, config.overlap)
        report = bounds.report
        for line in report.lines(partition.city_box()):
            CONSOLE.print(line)
        for warning in report.warnings:
            CONSOLE.print(f"[bold yellow]Warning (city box):[/bold yellow] {warning}")
        picture = self.store.root.parent / "city_bounds.png"
        save_bounds_figure(picture, partition.city_box(), partition.rotation, c2w, points, (partition.x_edges, partition.y_edges))
        CONSOLE.print(f"City box against the cameras and points: {picture}")
        rays = {b: len(p) for b, p in self.datamanager.assign_pixels(partition).items()}
        empty = {
            b: f"{rays[b]} training rays < --pipeline.min-rays-per-block {config.min_rays_per_block}"
            for b in range(partition.num_blocks)
            if rays[b] < config.min_rays_per_block
        }
        for b, why in empty.items():
            CONSOLE.print(f"[yellow]block {b} skipped: {why}")
        info = {"data": str(data), "num_train_images": len(c2w), "steps_per_block": config.steps_per_block, "bounds": report.to_dict()}
        info.update(grow.frame_info(self.datamanager.dataparser))  # so that the city can grow later
        self.store.create(partition, empty, info)
        partition.save(self.store.root / "partition.json")
        return partition

    # ------------------------------------------------------------------ prior
    def _resolve_prior(self, num_images: int) -> Dict[str, torch.Tensor]:
        """θ_shared: the store's (a run resumed or evaluated keeps its own), else --pipeline.prior."""
        probe = BlockField(self.config.model.field, num_images)
        if self.world_size > 1:  # rank 0 records the prior, the others read it
            if self.rank == 0 and not self.store.manifest.get("prior"):
                self._record_initial_prior(probe)
            distributed.barrier()
            self.store.refresh()
        if self.store.manifest.get("prior"):
            state = self.store.load_prior()
            probe.load_prior(state, source=f"prior in {self.store.root}")
            asked = self.config.prior
            if asked not in ("bundled", "random") and not self._prior_meta():
                given = load_checked(Path(asked), None, f"prior {asked}")
                if set(given) != set(state) or any(not torch.equal(given[k], v) for k, v in state.items()):
                    raise StoreError(f"{self.store.root} was started from another prior ({self.store.manifest['prior']['source']})")
            return state
        return self._record_initial_prior(probe)

    def _record_initial_prior(self, probe: BlockField) -> Dict[str, torch.Tensor]:
        state, source = initial_prior(self.config.prior, self.config.model.field, self.config.prior_seed)
        probe.load_prior(state, source=source)
        self.store.write_prior(state, source=source)
        CONSOLE.print(f"[bold]θ_shared[/bold]: {source}")
        return state

    def _prior_meta(self) -> Dict[str, Any]:
        return (self.store.manifest.get("prior") or {}).get("meta") or {}

    def meta_train(self) -> None:
        """Meta-learn θ_shared with the stream's blocks as tasks, then store it as the prior.

        With N processes every outer step averages the updates of N x tasks-per-batch tasks
        (each rank draws its own), and rank 0 records the result."""
        cfg = self.config.meta
        theta = self.learn_prior(self.stream)
        self.model.prior = theta
        source = f"meta-trained on {self.store.manifest['info'].get('data')}: {cfg.algorithm}, {cfg.meta_steps} steps, from {self.store.manifest['prior']['source']}"
        if self.world_size > 1:
            source += f", {self.world_size} processes"
        settings = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        if self.rank == 0:
            self.store.write_prior(theta, source=source, meta={"meta_trained": settings, "processes": self.world_size})
        distributed.barrier()
        self.store.refresh()
        CONSOLE.print(f"[bold]θ_shared[/bold] {source}")

    def learn_prior(self, blocks: List[int]) -> Dict[str, torch.Tensor]:
        """`--pipeline.meta` outer steps from the current prior, with `blocks` as tasks (writes nothing)."""
        return learn_prior([(self, b) for b in blocks], self.model.prior, self.config.meta)

    def absorb_finished_blocks(self) -> None:
        """Meta-continual: θ ← θ + ε (φ_b − θ) for every finished block not absorbed yet, in stream order."""
        meta = dict(self._prior_meta())
        absorbed = list(meta.get("continual_absorbed", []))
        todo = [b for b in self.stream if self.store.status(b) == DONE and b not in absorbed]
        if not todo:
            return
        theta = self.model.prior
        eps = self.config.meta.continual_epsilon
        for b in todo:
            phi = self.store.load_block(b)
            theta = {k: v + eps * (phi[k].to(v) - v) for k, v in theta.items()}
            absorbed.append(b)
        self.model.prior = theta
        meta["continual_absorbed"] = absorbed
        source = self.store.manifest["prior"]["source"].split(" + meta-continual")[0] + f" + meta-continual (ε {eps}) on blocks {absorbed}"
        self.store.write_prior(theta, source=source, meta=meta)

    def task_loss(self, params: Dict[str, torch.Tensor], b: int, step: int) -> torch.Tensor:
        """Photometric loss of block b's rays drawn at `step`, with the active slot's weights = params."""
        from mclnf_city.meta import call

        self.model.start_block(b)  # block geometry (the weights come from `params`)
        self.datamanager.active_block = b
        ray_bundle, data = self.datamanager.next_train(step)
        outputs = call(self.model, {"active." + k: v for k, v in params.items()}, ray_bundle)
        return torch.mean((outputs["rgb"] - data["image"].to(outputs["rgb"])) ** 2)

    # ------------------------------------------------------------------ stream
    def block_at(self, step: int) -> Optional[int]:
        """The block this process trains at `step` (None: its share of the wave is done, it waits)."""
        return self.schedule[min(step // self.config.steps_per_block, len(self.schedule) - 1)]

    def context_blocks(self, b: int) -> List[int]:
        """Finished blocks that answer for their own regions while b trains: those of earlier waves,
        and those trained before this run."""
        wave = self.slots_per_wave * self.world_size
        earlier = set(self.stream[: self.stream.index(b) // wave * wave])
        # Blocks outside this run's stream were trained before it (a grown city's old blocks).
        return [c for c in self.store.done_blocks() if c in earlier or c not in self.stream]

    def resume_step(self) -> int:
        """First step of the first wave with an unfinished block (where a multi-process run resumes)."""
        spb, wave = self.config.steps_per_block, self.slots_per_wave * self.world_size
        for i in range(0, len(self.stream), wave):
            if any(self.store.status(b) != DONE for b in self.stream[i : i + wave]):
                return i // wave * self.slots_per_wave * spb
        return self.total_steps

    def _start_block(self, b: int) -> None:
        self.store.refresh()  # blocks other processes finished in earlier waves
        self.model.done_blocks = set(self.context_blocks(b))
        # Every block draws from its own random stream (stratified samples), so what it learns
        # does not depend on which process trains it, or after what.
        torch.manual_seed(self.config.datamanager.seed * 1_000_003 + b)
        self.model.start_block(b)
        self.datamanager.active_block = b
        if self.store.status(b) != DONE:
            self.store.set_status(b, ACTIVE)
        if self._optimizers is not None:  # a new block owes nothing to the last one's moments
            for opt in self._optimizers.optimizers.values():
                opt.state.clear()
        self._block_started_at = time.time()
        CONSOLE.print(f"[bold]block {b}[/bold] ({self.stream.index(b) + 1}/{len(self.stream)}) starts from θ_shared")
        self.city_viewer.refresh()

    def get_train_loss_dict(self, step: int):
        b = self.block_at(step)
        if b is not None and int(self.model.active_block) != b:
            self._start_block(b)
        self.datamanager.active_block = b
        if b is None or self.store.status(b) == DONE:
            # Finished and stored by an earlier run after its last checkpoint: do not retrain.
            zero = sum(p.sum() * 0.0 for p in self.model.active.parameters())
            return {}, {"rgb_loss": zero}, {}
        ray_bundle, batch = self.datamanager.next_train(step % self.config.steps_per_block)
        outputs = self.model(ray_bundle)
        metrics = self.model.get_metrics_dict(outputs, batch)
        fisher = self.config.fisher
        if fisher.enabled:
            scores = self.model.fisher_scores(outputs, batch, exact=fisher.score == "exact")
            self.datamanager.record_scores(batch, scores)
            if fisher.loss_weighting:
                batch["ray_weights"] = fisher_loss_weights(scores, fisher.weight_range)
            metrics["fisher_score_mean"] = scores.mean()
        return outputs, self.model.get_loss_dict(outputs, batch, metrics), metrics

    def _set_lr(self, step: int) -> None:
        if self._optimizers is None:
            return
        t = (step % self.config.steps_per_block) / max(self.config.steps_per_block - 1, 1)
        for opt in self._optimizers.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * self.config.lr_final_fraction**t

    def _after_step(self, step: int) -> None:
        spb = self.config.steps_per_block
        if (step + 1) % spb != 0 and step + 1 < self.total_steps:
            return
        b = self.block_at(step)
        if b is not None:
            self.finish_block(b, step)
        if ((step + 1) // spb) % self.slots_per_wave == 0 or step + 1 >= self.total_steps:
            self._end_wave(step)

    def _end_wave(self, step: int) -> None:
        """Every process waits for the wave's blocks; after the last wave, rank 0 writes the report."""
        distributed.barrier()
        self.store.refresh()
        if step + 1 >= self.total_steps:
            self.model.done_blocks = set(self.store.done_blocks())
            if self.rank == 0:
                self.write_report()

    def finish_block(self, b: int, step: int) -> None:
        """Evaluate, store (the commit point), freeze, checkpoint."""
        if int(self.model.active_block) != b:
            return
        if self.store.status(b) != DONE:
            metrics = self.evaluate_blocks([b]).get(b, {})
            seconds = round(time.time() - self._block_started_at, 2)
            self.store.write_block(
                b, self.model.active.state_dict(), self.config.steps_per_block, metrics, seconds=seconds, rank=self.rank
            )
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("psnr", "ssim", "lpips_alex"))
            CONSOLE.print(f"[green]block {b} done[/green] and frozen -> {self.store.root} ({shown or 'no test views'})")
        self.model.block_finished(b)
        self.city_viewer.refresh()
        if self.config.meta.continual:
            self.absorb_finished_blocks()
        if self._trainer is not None:
            self._trainer.save_checkpoint(step)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        self._optimizers, self._trainer = attrs.optimizers, attrs.trainer
        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._set_lr),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_step),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.city_viewer.on_step),
        ]

    # ------------------------------------------------------------------ evaluation
    def test_views_by_block(self) -> Dict[int, List[int]]:
        """Test views grouped by the block they look at."""
        cams = self.datamanager.eval_dataset.cameras
        homes = look_blocks(self.partition, cams.camera_to_worlds).tolist()
        groups: Dict[int, List[int]] = {}
        for i, b in enumerate(homes):
            groups.setdefault(b, []).append(i)
        return groups

    @torch.no_grad()
    def render_test_view(self, i: int, max_pixels: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Test view i and its photo, both downscaled (area average) to at most max_pixels when it is > 0."""
        dataset = self.datamanager.eval_dataset
        camera = dataset.cameras[i : i + 1].to(self.device)
        gt = dataset[i]["image"][..., :3]
        height, width = gt.shape[:2]
        if 0 < max_pixels < height * width:
            camera.rescale_output_resolution(math.sqrt(max_pixels / (height * width)))
            size = (int(camera.height.item()), int(camera.width.item()))
            gt = torch.nn.functional.interpolate(gt.permute(2, 0, 1)[None].float(), size=size, mode="area")[0].permute(1, 2, 0)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.for_evaluation():
                outputs = self.model.get_outputs_for_camera(camera)
        finally:
            self.model.train(was_training)
        return outputs["rgb"], gt.to(outputs["rgb"])

    # nerfstudio's evaluation (ns-eval, eval iterations while training) sees every block too.
    def get_eval_loss_dict(self, step: int):
        with self.model.for_evaluation():
            return super().get_eval_loss_dict(step)

    def get_eval_image_metrics_and_images(self, step: int):
        with self.model.for_evaluation():
            return super().get_eval_image_metrics_and_images(step)

    def get_average_image_metrics(self, *args, **kwargs):
        with self.model.for_evaluation():
            return super().get_average_image_metrics(*args, **kwargs)

    def evaluate_blocks(self, blocks: List[int]) -> Dict[int, Dict[str, float]]:
        """Mean PSNR/SSIM (LPIPS when available) of each block's test views, rendered now (at most --pipeline.block-eval-max-pixels)."""
        groups = self.test_views_by_block()
        result: Dict[int, Dict[str, float]] = {}
        for b in blocks:
            views = groups.get(b, [])
            if not views:
                continue
            per_view = [image_metrics(*self.render_test_view(i, self.config.block_eval_max_pixels)) for i in views]
            result[b] = {k: sum(m[k] for m in per_view) / len(per_view) for k in per_view[0]}
            result[b]["num_views"] = float(len(views))
            result[b]["solo_render_sha256"] = sha256(self.render_block_alone(b, views).numpy().tobytes())
        return result

    @torch.no_grad()
    def render_block_alone(self, b: int, views: List[int]) -> torch.Tensor:
        """Test views rendered by finished block b alone (its region and far field): [V, H, W, 3].

        Its bytes must never change once b is finished: zero forgetting, checked every run.
        """
        self.model.solo_block = b
        try:
            return torch.stack([self.render_test_view(i, self.config.block_eval_max_pixels)[0].cpu() for i in views])
        finally:
            self.model.solo_block = None

    def write_report(self) -> Path:
        """Per-block metrics at finish and at the end of the stream (forgetting), plus test renders."""
        from PIL import Image

        report = self.store.root / "report"
        (report / "renders").mkdir(parents=True, exist_ok=True)
        at_end = self.evaluate_blocks(self.stream)
        blocks: Dict[str, Any] = {}
        for b in self.stream:
            entry = self.store.block(b)
            finish = entry.get("metrics", {}).get("at_finish", {})
            end = at_end.get(b, {})
            self.store.update_metrics(b, "at_end", end)
            blocks[str(b)] = {
                # City renders: at finish, later blocks are still empty; at the end, all are trained.
                "at_finish": finish,
                "at_end": end,
                "psnr_change": (end["psnr"] - finish["psnr"]) if "psnr" in finish and "psnr" in end else None,
                # Forgetting: the block's own renders, compared byte for byte.
                "renders_alone_bit_identical": (
                    finish.get("solo_render_sha256") == end.get("solo_render_sha256") if "psnr" in end else None
                ),
                "seconds": entry.get("seconds"),
            }
        per_view = []
        for i in range(len(self.datamanager.eval_dataset)):
            rgb, gt = self.render_test_view(i)
            per_view.append(image_metrics(rgb, gt))
            pair = torch.cat([gt, rgb.clamp(0, 1)], dim=1)
            Image.fromarray((pair.cpu().numpy() * 255).round().astype("uint8")).save(report / "renders" / f"test_{i:04d}.png")
        mean = {k: sum(m[k] for m in per_view) / len(per_view) for k in per_view[0]} if per_view else {}
        summary = {
            "method": "mclnf-city",
            "test_views": len(per_view),
            "mean": mean,
            "lpips": lpips_status(),
            "blocks": blocks,
            "stream_order": self.stream,
        }
        atomic_write_bytes(report / "metrics.json", json.dumps(summary, indent=1).encode())
        CONSOLE.print(f"[bold green]city report[/bold green]: {report / 'metrics.json'}  renders: {report / 'renders'}")
        if mean:
            CONSOLE.print("test views: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
        return report

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None):
        """Strict: a checkpoint must hold exactly the active slot of this architecture."""
        model_state = {k[len("_model.") :]: v for k, v in state_dict.items() if k.startswith("_model.")}
        own = self.model.state_dict()
        missing, extra = sorted(set(own) - set(model_state)), sorted(set(model_state) - set(own))
        if missing or extra:
            raise StoreError(f"checkpoint does not match the mclnf-city model: missing {missing[:8]}, unexpected {extra[:8]}")
        active = int(model_state["active_block"])
        if active >= self.partition.num_blocks:
            raise StoreError(f"checkpoint's active block {active} is not in the partition ({self.partition.num_blocks} blocks)")
        self.model.load_state_dict(model_state, strict=True)
        if active >= 0 and self.test_mode == "val":  # resuming training inside that block
            self.datamanager.active_block = active


# ---------------------------------------------------------------------- θ_shared
# Package data, so that a wheel install finds them too (assets/priors links here).
PRIOR_DIR = Path(__file__).resolve().parent / "priors"


def prior_key(spec: BlockFieldSpec) -> str:
    """Name of the bundled prior of an architecture: the fields that shape θ_shared."""
    s = spec
    return (
        f"blockfield-L{s.num_levels}-R{s.base_res}-{s.max_res}-T{s.log2_hashmap_size}-F{s.features_per_level}"
        f"-H{s.hidden_dim}-G{s.geo_feat_dim}-C{s.hidden_dim_color}-A{s.appearance_embedding_dim}-S{s.far_field_hidden_dim}"
    )


def bundled_prior_path(spec: BlockFieldSpec) -> Path:
    return PRIOR_DIR / f"{prior_key(spec)}.pt"


def initial_prior(asked: str, spec: BlockFieldSpec, seed: int) -> Tuple[Dict[str, torch.Tensor], str]:
    """The prior --pipeline.prior names ('bundled', 'random' or a path), and where it came from."""
    if asked == "bundled":
        path = bundled_prior_path(spec)
        if path.exists():
            return load_checked(path, None, f"bundled prior {path}"), f"bundled prior {path.name}"
        CONSOLE.print(f"[yellow]no bundled prior for this architecture ({path.name}): starting from the seeded init")
        asked = "random"
    if asked == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return BlockField(spec, num_images=1).prior_state(), f"default init, seed {seed}"  # capture-independent
    path = Path(asked)
    if not path.exists():
        raise FileNotFoundError(f"--pipeline.prior {asked}: no such file (or use 'bundled' / 'random')")
    return load_checked(path, None, f"prior {path}"), f"prior file {path}"


def learn_prior(tasks: List[Tuple["CityPipeline", int]], prior: Dict[str, torch.Tensor], cfg: MetaLearningConfig) -> Dict[str, torch.Tensor]:
    """cfg.meta_steps outer steps of cfg.algorithm from `prior`; a task is a block of a capture's pipeline."""
    from rich.progress import track

    from mclnf_city.meta import meta_step

    from mclnf_city import distributed

    gen = torch.Generator().manual_seed(cfg.seed + 7919 * distributed.rank())  # each process draws its own tasks
    theta = {k: v.clone() for k, v in prior.items()}
    for pipeline, _ in tasks:
        pipeline.model.train()
    draw = 10_000_000  # ray draws of meta-training never coincide with the stream's steps

    def loss(_module, params, batch):
        pipeline, b, step = batch
        return pipeline.task_loss(params, b, step)

    started = time.time()
    for step in track(range(cfg.meta_steps), description=f"Meta-training θ_shared ({cfg.algorithm})"):
        if not CONSOLE.is_terminal and step % max(1, cfg.meta_steps // 10) == 0:  # progress in logs too
            CONSOLE.print(f"meta-training step {step}/{cfg.meta_steps} ({time.time() - started:.0f} s)")
        batch_tasks = []
        for _ in range(cfg.tasks_per_batch):
            pipeline, b = tasks[int(torch.randint(len(tasks), (1,), generator=gen))]
            support = [(pipeline, b, draw + i) for i in range(cfg.inner_steps)]
            batch_tasks.append((support, (pipeline, b, draw + cfg.inner_steps)))
            draw += cfg.inner_steps + 1
        theta = meta_step(
            None, theta, batch_tasks, loss, cfg.algorithm, cfg.inner_lr, cfg.outer_lr,
            inner_optimizer="adam" if cfg.algorithm == "reptile" else "sgd",
        )
        # The outer update is linear in the tasks' contributions: the mean of the processes'
        # updated θ is the update of all their tasks together (identical θ on every rank).
        theta = distributed.average_across_ranks(theta)
    for pipeline, _ in tasks:
        pipeline.model.active_block.fill_(-1)
        pipeline.datamanager.active_block = None
    return theta

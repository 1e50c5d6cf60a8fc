"""The nerfstudio pipeline of mclnf-city: partition, then one block after another, each frozen when done.

Step s of training belongs to a block of the `BlockStream` (`mclnf_city/stream.py`: the
schedule, waves and the active block). When a block's
steps are over, the active slot is evaluated on the block's test views, written to the
`CityStore` (the commit point), kept frozen, and a checkpoint is saved; the next step
resets the active slot from θ_shared and clears the optimizer state. A run resumed
from any checkpoint therefore continues inside the block it was killed in, and never
retrains a block the store holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import torch
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city import distributed, grow, prior
from mclnf_city.capture import check_cameras, check_capture
from mclnf_city.datamanager import CityDataManagerConfig
from mclnf_city.fields import require_same_keys
from mclnf_city.files import crash_point
from mclnf_city.fisher import FisherConfig, fisher_loss_weights, importance_weights
from mclnf_city.meta import call
from mclnf_city.model import CityModelConfig
from mclnf_city.bounds import capture_bounds, save_bounds_figure
from mclnf_city.partition import check_camera_spread, partition_from_bounds, partition_table, too_few_rays
from mclnf_city.prior import MetaLearningConfig
from mclnf_city.report import CityReport
from mclnf_city.stream import BlockStream
from mclnf_city.store import ACTIVE, DONE, EMPTY, StoreError
from mclnf_city.viewer import CityViewer


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
    report_max_pixels: int = 0
    """The city report renders every test view downscaled to at most this many pixels (0: full resolution); for captures with thousands of test views."""
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
        config.fisher.check()
        config.meta.check()
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
        if training:  # every photo decodes and fits its camera before the city is touched
            self.datamanager.check_image_files()
        self.store = grow.open_store(config, outputs, training)  # CityStore(config.store_dir) unless --pipeline.grow-city

        if training and world_size > 1:  # rank 0 creates the city and its pixel index, the others then read them
            if self.rank == 0:
                if not self.store.exists:
                    self._create_city(config, data, outputs, c2w)
                else:
                    self.datamanager.index_pixels(self.store.partition(), self.store.pixels_dir)
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
            if self.datamanager.pixel_index is None:  # set when this process made the city or the index
                self.datamanager.index_pixels(partition, self.store.pixels_dir, build=world_size == 1)
            masks = {b: self.datamanager.block_images(b) for b in range(partition.num_blocks)}
            if self.rank == 0:
                images = {b: int(m.sum()) for b, m in masks.items()}
                CONSOLE.print(partition_table(partition, images, self.datamanager.rays_per_block()))
        # A grown city's run trains its own blocks only (grow.py); otherwise the partition's order.
        order = grow.prepare_run(self.store, config, self.datamanager, masks, training) or partition.stream_order
        order = [b for b in order if self.store.status(b) != EMPTY]
        if training and not order:
            raise StoreError("every block is empty: no block has enough training rays to train")
        wave = config.blocks_per_wave or world_size
        if config.meta.continual and wave > 1:
            raise ValueError("--pipeline.meta.continual moves θ_shared after every block: it needs one block per wave")

        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
            partition=partition,
            store=self.store,
            prior=prior.resolve_prior(self.store, config.prior, config.model.field, config.prior_seed, self.rank, world_size),
            block_image_masks=masks,
        )
        self.model.to(device)
        self.stream = BlockStream(order, config.steps_per_block, wave, self.rank, world_size, self.model, self.datamanager)
        self.total_steps = self.stream.total_steps
        self.report = CityReport(self.model, self.datamanager, partition, self.store, config.block_eval_max_pixels, config.report_max_pixels)
        if training:
            if config.meta.meta_steps > 0 and not prior.prior_meta(self.store).get("meta_trained"):
                self.meta_train()
            if config.meta.continual:
                self.model.prior = prior.absorb_finished_blocks(self.store, self.model.prior, self.stream, config.meta.continual_epsilon)
            self.model.fisher_features = config.fisher.enabled
            if config.fisher.sampling:
                self.datamanager.fisher = config.fisher
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
        self.datamanager.index_pixels(partition, self.store.pixels_dir)
        empty = too_few_rays(self.datamanager.rays_per_block(), config.min_rays_per_block)
        for b, why in empty.items():
            CONSOLE.print(f"[yellow]block {b} skipped: {why}")
        info = {"data": str(data), "num_train_images": len(c2w), "steps_per_block": config.steps_per_block, "bounds": report.to_dict()}
        info.update(grow.frame_info(self.datamanager.dataparser))  # so that the city can grow later
        self.store.create(partition, empty, info)
        return partition

    # ------------------------------------------------------------------ prior
    def meta_train(self) -> None:
        """Meta-learn θ_shared with the stream's blocks as tasks, then store it as the prior.

        With N processes every outer step averages the updates of N x tasks-per-batch tasks
        (each rank draws its own), and rank 0 records the result."""
        theta = self.learn_prior(list(self.stream))
        self.model.prior = theta
        prior.record_meta_trained(self.store, theta, self.config.meta, self.rank, self.world_size)

    def learn_prior(self, blocks: List[int]) -> Dict[str, torch.Tensor]:
        """`--pipeline.meta` outer steps from the current prior, with `blocks` as tasks (writes nothing)."""
        return prior.learn_prior([(self, b) for b in blocks], self.model.prior, self.config.meta)

    def task_loss(self, params: Dict[str, torch.Tensor], b: int, step: int) -> torch.Tensor:
        """Photometric loss of block b's rays drawn at `step`, with the active slot's weights = params
        (each ray weighted by its FIM-NeRF score with --pipeline.meta.fisher-weighting)."""
        self.stream.activate(b)  # block geometry (the weights come from `params`)
        ray_bundle, data = self.datamanager.next_train(step)
        weighted, features = self.config.meta.fisher_weighting, self.model.fisher_features
        self.model.fisher_features = features or weighted
        try:
            outputs = call(self.model, {"active." + k: v for k, v in params.items()}, ray_bundle)
        finally:
            self.model.fisher_features = features
        if weighted:
            data = {**data, "ray_weights": fisher_loss_weights(self.model.fisher_scores(outputs, data), self.config.fisher.weight_range)}
        return self.model.get_loss_dict(outputs, data)["rgb_loss"]

    # ------------------------------------------------------------------ stream
    def resume_step(self) -> int:
        """First step of the first wave with an unfinished block (where a multi-process run resumes)."""
        return self.stream.resume_step(lambda b: self.store.status(b) == DONE)

    def _start_block(self, b: int) -> None:
        self.store.refresh()  # blocks other processes finished in earlier waves
        self.model.done_blocks = set(self.stream.context_blocks(b, self.store.done_blocks()))
        self.stream.activate(b)
        if self.store.status(b) != DONE:
            self.store.set_status(b, ACTIVE)
        if self._optimizers is not None:  # a new block owes nothing to the last one's moments
            for opt in self._optimizers.optimizers.values():
                opt.state.clear()
        self._block_started_at = time.time()
        CONSOLE.print(f"[bold]block {b}[/bold] ({self.stream.index(b) + 1}/{len(self.stream)}) starts from θ_shared")
        self.city_viewer.refresh()

    def get_train_loss_dict(self, step: int):
        b = self.stream.block_at(step)
        if b is not None and self.stream.active != b:
            self._start_block(b)
        self.stream.follow(b)
        if b is None or self.store.status(b) == DONE:
            # Finished and stored by an earlier run after its last checkpoint: do not retrain.
            zero = sum(p.sum() * 0.0 for p in self.model.active.parameters())
            return {}, {"rgb_loss": zero}, {}
        crash_point("step", str(step))
        # Every step of every block draws from its own random stream (stratified samples), so
        # what a block learns depends neither on the process that trains it nor on a resume.
        in_block = step % self.config.steps_per_block
        torch.manual_seed((self.config.datamanager.seed * 1_000_003 + b) * 1_000_003 + in_block)
        ray_bundle, batch = self.datamanager.next_train(in_block)
        outputs = self.model(ray_bundle)
        metrics = self.model.get_metrics_dict(outputs, batch)
        fisher = self.config.fisher
        if fisher.enabled:
            scores = self.model.fisher_scores(outputs, batch, exact=fisher.score == "exact")
            self.datamanager.record_scores(batch, scores)
            weights = fisher_loss_weights(scores, fisher.weight_range) if fisher.loss_weighting else None
            if fisher.importance_correction and "draw_probability" in batch:
                correction = importance_weights(batch["draw_probability"], batch["pool_size"], fisher.weight_range)
                weights = correction if weights is None else weights * correction
            if weights is not None:
                batch["ray_weights"] = weights
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
        if not self.stream.is_last_step_of_slot(step):
            return
        b = self.stream.block_at(step)
        if b is not None:
            self.finish_block(b, step)
        if self.stream.is_last_step_of_wave(step):
            self._end_wave(step)

    def _end_wave(self, step: int) -> None:
        """Every process waits for the wave's blocks; after the last wave, rank 0 writes the report."""
        distributed.barrier()
        self.store.refresh()
        if step + 1 >= self.total_steps:
            self.model.done_blocks = set(self.store.done_blocks())
            if self.rank == 0:
                self.report.write(self.stream)

    def write_missing_report(self) -> None:
        """A stream found complete (resumed after its last block) still gets its report."""
        if self.rank == 0 and not (self.store.root / "report" / "metrics.json").exists():
            self.model.done_blocks = set(self.store.done_blocks())
            self.report.write(self.stream)

    def finish_block(self, b: int, step: int) -> None:
        """Evaluate, store (the commit point), freeze, checkpoint."""
        if self.stream.active != b:
            return
        if self.store.status(b) != DONE:
            metrics = self.report.evaluate_blocks([b]).get(b, {})
            seconds = round(time.time() - self._block_started_at, 2)
            self.store.write_block(
                b, self.model.active.block_state(), self.config.steps_per_block, metrics, seconds=seconds, rank=self.rank
            )
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("psnr", "ssim", "lpips_alex"))
            CONSOLE.print(f"[green]block {b} done[/green] and frozen -> {self.store.root} ({shown or 'no test views'})")
        self.model.block_finished(b)
        self.city_viewer.refresh()
        if self.config.meta.continual:
            self.model.prior = prior.absorb_finished_blocks(self.store, self.model.prior, self.stream, self.config.meta.continual_epsilon)
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

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None):
        """Strict: a checkpoint must hold exactly the active slot of this architecture."""
        model_state = {k[len("_model.") :]: v for k, v in state_dict.items() if k.startswith("_model.")}
        require_same_keys(self.model.state_dict(), model_state, "checkpoint does not match the mclnf-city model", StoreError)
        active = int(model_state["active_block"])
        if active >= self.partition.num_blocks:
            raise StoreError(f"checkpoint's active block {active} is not in the partition ({self.partition.num_blocks} blocks)")
        self.model.load_state_dict(model_state, strict=True)
        if active >= 0 and self.test_mode == "val":  # resuming training inside that block
            self.model.done_blocks = set(self.stream.context_blocks(active, self.store.done_blocks()))  # as at its start
            self.stream.follow(active)

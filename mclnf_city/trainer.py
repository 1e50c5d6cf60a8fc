"""nerfstudio's Trainer, with what a stream of blocks needs.

- The block store's place is fixed before config.yml is written (so ns-eval, ns-render,
  ns-viewer and ns-export find it); with --load-dir it is the store of that run.
- The iteration count comes from the schedule (blocks x steps per block), so the user
  never computes it, and a resumed run ends where the stream ends.
- Checkpoints are written atomically: a SIGKILL mid-save never leaves a truncated
  "latest" checkpoint behind.
- The store, not a checkpoint, is the truth: a resumed run starts no earlier than the first
  wave with an unfinished block (with one process, the checkpoint's step if it is later; with
  several, `--machine.num-devices N`, see `mclnf_city/distributed.py`, that wave's start, and
  each process loses at most the block it was training).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

import torch

from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city.files import atomic_write


@dataclass
class CityTrainerConfig(TrainerConfig):
    """ns-train configuration of mclnf-city (the iteration count is derived from the stream)."""

    _target: Type = field(default_factory=lambda: CityTrainer)

    def resolve_store_dir(self) -> None:
        pipeline = self.pipeline
        if getattr(pipeline, "store_dir", None) is None:
            if self.load_dir is not None:
                pipeline.store_dir = Path(self.load_dir).parent / "city"
            elif self.load_checkpoint is not None:
                pipeline.store_dir = Path(self.load_checkpoint).parent.parent / "city"
            else:
                pipeline.store_dir = self.get_base_dir() / "city"

    def save_config(self) -> None:
        # ns-train calls this just before it launches the processes.
        self.resolve_store_dir()
        super().save_config()
        from mclnf_city.distributed import use_cpu_worker

        use_cpu_worker(self.machine.device_type, self.machine.num_devices * self.machine.num_machines)


class CityTrainer(Trainer):
    config: CityTrainerConfig

    def setup_optimizers(self) -> Optimizers:
        # Runs right after the pipeline is built: the stream length is known now.
        self.config.max_num_iterations = self.pipeline.total_steps
        return super().setup_optimizers()

    def setup(self, test_mode="val") -> None:
        self.config.resolve_store_dir()
        super().setup(test_mode=test_mode)
        if test_mode == "val":
            if self.world_size > 1:
                self._start_step = self.pipeline.resume_step()
                self.pipeline.stream.deactivate()  # every process starts its block afresh
            else:  # a checkpoint older than the store's last block: that block is not trained again
                self._start_step = max(self._start_step, self.pipeline.resume_step())
        self.config.max_num_iterations = max(self.pipeline.total_steps - self._start_step, 0)

    def _load_checkpoint(self) -> None:
        load_dir = self.config.load_dir
        if load_dir is not None and self.config.load_step is None and not list(Path(load_dir).glob("step-*.ckpt")):
            # killed before its first checkpoint: the store alone says which blocks are finished
            CONSOLE.print(f"no checkpoint in {load_dir}: resuming from the city's store ({self.config.pipeline.store_dir}) alone")
            return
        super()._load_checkpoint()

    def train(self) -> None:
        if self.config.max_num_iterations == 0:
            print("[mclnf-city] the stream is already complete; nothing to train")
            self.pipeline.write_missing_report()  # killed while writing it: the store has all it needs
            return
        super().train()

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": step,
            "pipeline": self.pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        # The temp file lives beside (not in) the checkpoint folder: nerfstudio parses every
        # name in that folder as step-N.ckpt when resuming.
        atomic_write(path, lambda tmp: torch.save(state, tmp), temp_dir=self.checkpoint_dir.parent)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != path:
                    old.unlink()


def preset_config(
    preset: str,
    data: Path,
    output_dir: Path,
    steps_per_block: Optional[int] = None,
    rays: Optional[int] = None,
    **pipeline,
):
    """The `ns-train <preset>` config for a capture, with tensorboard logging on the CPU."""
    # The presets import this module: imported here, when a config is asked for.
    from method_configs import mclnf_city_presets

    config = copy.deepcopy(getattr(mclnf_city_presets, preset.replace("-", "_")).config)
    config.data = Path(data)
    config.pipeline.datamanager.data = Path(data)
    config.output_dir = Path(output_dir)
    config.vis = "tensorboard"
    config.machine.device_type = "cpu"
    if steps_per_block is not None:
        config.pipeline.steps_per_block = steps_per_block
    if rays is not None:
        config.pipeline.datamanager.train_num_rays_per_batch = rays
    for key, value in pipeline.items():
        setattr(config.pipeline, key, value)
    config.set_timestamp()
    return config


def setup_trainer(config):
    """Save the config and build the trainer (partition, store, model) as ns-train would."""
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer

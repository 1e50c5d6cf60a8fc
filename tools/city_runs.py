"""Shared by the tools and tests: a preset's trainer config pointed at a capture, set up in-process."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional


def preset_config(
    preset: str,
    data: Path,
    output_dir: Path,
    steps_per_block: Optional[int] = None,
    rays: Optional[int] = None,
    **pipeline,
):
    """The `ns-train <preset>` config for a capture, with tensorboard logging on the CPU."""
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

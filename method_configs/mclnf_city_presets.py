"""Presets of `ns-train mclnf-city` and `ns-train mclnf-city-tiny`: data, not code.

Imported by every ns-* command at start-up (nerfstudio discovers methods at import),
so this module must stay cheap and must never raise.
"""

from __future__ import annotations

import torch

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from mclnf_city.datamanager import CityDataManagerConfig
from mclnf_city.fields import BlockFieldSpec
from mclnf_city.model import CityModelConfig
from mclnf_city.pipeline import CityPipelineConfig
from mclnf_city.trainer import CityTrainerConfig

NEVER = 1_000_000_000  # nerfstudio's periodic evals are replaced by per-block evaluation


def _trainer(method_name: str, pipeline: CityPipelineConfig, lr: float, appearance_lr: float) -> CityTrainerConfig:
    return CityTrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=NEVER,
        steps_per_eval_image=NEVER,
        steps_per_eval_all_images=NEVER,
        steps_per_save=500,
        save_only_latest_checkpoint=True,
        mixed_precision=False,
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=pipeline,
        optimizers={
            "fields": {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None},
            "appearance": {"optimizer": AdamOptimizerConfig(lr=appearance_lr, eps=1e-15), "scheduler": None},
        },
        viewer=ViewerConfig(num_rays_per_chunk=4096, quit_on_train_completion=True),
        vis="viewer",
    )


mclnf_city = MethodSpecification(
    config=_trainer(
        "mclnf-city",
        CityPipelineConfig(
            # 1024 rays per step at lr 2e-2: on a CPU, more and smaller steps learn more per
            # second. Demo city, 300 s of training: 4096 rays 18.78 dB, 1024 rays 20.22 dB,
            # 1024 rays at lr 2e-2 21.43 dB (3e-2: 21.27, 4e-2: 20.31), one run each, on the demo city's test views.
            # lr 2e-2 checked since on validation views of the zoo and lund_door: 1e-2 -0.84 dB,
            # 4e-2 +0.16 dB, not a win (tools/bench/README.md, how the defaults were chosen).
            # Rays per step checked there too (validation views, 120 s): 2048 -0.41 dB,
            # 512 +0.24 dB over two seeds, not a win.
            datamanager=CityDataManagerConfig(train_num_rays_per_batch=1024),
            # 24 + 24 samples: the same test PSNR as 32 + 32 at equal steps on the demo city
            # (18.41 vs 18.38 dB, 4 x 100 steps) for 1.3x less time per step. 16 + 16 on
            # validation views at 120 s: +0.19 dB, one seed, not a win.
            model=CityModelConfig(field=BlockFieldSpec(), num_coarse_samples=24, num_fine_samples=24),
            grid=(2, 2),
            steps_per_block=2000,
        ),
        lr=2e-2,
        # Appearance embeddings held at zero (lr 0): on validation views, 150 steps per block,
        # learning them at the field's rate lost 0.51 dB on a generated capture and changed
        # nothing on lund_door (+0.03 dB when held); tools/bench/README.md.
        appearance_lr=0.0,
    ),
    description="MCL-NF city: spatial blocks streamed one after another, each frozen when done.",
)

mclnf_city_tiny = MethodSpecification(
    config=_trainer(
        "mclnf-city-tiny",
        CityPipelineConfig(
            datamanager=CityDataManagerConfig(train_num_rays_per_batch=1024),
            model=CityModelConfig(
                field=BlockFieldSpec(
                    num_levels=8,
                    base_res=16,
                    max_res=256,
                    log2_hashmap_size=14,
                    hidden_dim=32,
                    hidden_dim_color=32,
                    appearance_embedding_dim=4,
                    far_field_hidden_dim=16,
                ),
                num_coarse_samples=24,
                num_fine_samples=24,
            ),
            grid=(2, 2),
            steps_per_block=400,
        ),
        lr=1e-2,
        appearance_lr=0.0,  # as mclnf-city
    ),
    description="Small, fast mclnf-city preset for CPU demos and tests.",
)

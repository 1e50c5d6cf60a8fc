"""Run `ns-train` with LPIPS made offline-safe, for baselines such as nerfacto.

nerfstudio's nerfacto builds torchmetrics' LPIPS at model init, which downloads AlexNet
weights; with no network that is a crash before the first step. When the weights are not
already on disk, this wrapper swaps LPIPS for a stub that reports NaN (never a number we
could mistake for a measurement) and then runs nerfstudio's own `ns-train` entry point.

    python tools/bench/ns_train_offline.py nerfacto --data assets/demo_city --pipeline.model.implementation torch
"""

from __future__ import annotations

import sys

import torch


def patch_lpips() -> None:
    from mclnf_city.metrics import lpips_weights_path

    if lpips_weights_path().exists():
        return
    import torchmetrics.image.lpip as lpip

    class UnavailableLPIPS(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, *args, **kwargs):
            return torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = UnavailableLPIPS
    import torchmetrics.image

    torchmetrics.image.LearnedPerceptualImagePatchSimilarity = UnavailableLPIPS
    print(f"[ns_train_offline] LPIPS unavailable offline ({lpips_weights_path()} missing): reported as NaN")


def main() -> None:
    patch_lpips()
    from nerfstudio.scripts.train import entrypoint

    sys.argv = ["ns-train", *sys.argv[1:]]
    entrypoint()


if __name__ == "__main__":
    main()

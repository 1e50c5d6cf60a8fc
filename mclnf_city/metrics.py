"""Image metrics: PSNR, SSIM, and LPIPS only when its weights are already on disk.

LPIPS (torchmetrics, AlexNet) would download torchvision's AlexNet weights on first
use; with no network that is a crash. We look for the file first and report LPIPS as
unavailable (once, with the path to put the file at) when it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor

_LPIPS = None
_LPIPS_CHECKED = False


def lpips_weights_path() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def lpips_status() -> str:
    path = lpips_weights_path()
    return "available" if path.exists() else f"unavailable (AlexNet weights not found at {path}; no download is attempted)"


def _lpips_metric():
    global _LPIPS, _LPIPS_CHECKED
    if not _LPIPS_CHECKED:
        _LPIPS_CHECKED = True
        if lpips_weights_path().exists():
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            _LPIPS = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        else:
            print(f"[mclnf-city] LPIPS {lpips_status()}")
    return _LPIPS


def image_metrics(pred: Tensor, gt: Tensor) -> Dict[str, float]:
    """pred, gt: [H, W, 3] in [0, 1] -> psnr, ssim (and lpips_alex when available)."""
    from torchmetrics.functional import structural_similarity_index_measure

    p = pred.clamp(0, 1).permute(2, 0, 1)[None].float().cpu()
    g = gt.permute(2, 0, 1)[None].float().cpu()
    mse = torch.mean((p - g) ** 2)
    out: Dict[str, float] = {
        "psnr": float(-10.0 * torch.log10(mse.clamp_min(1e-10))),
        "ssim": float(structural_similarity_index_measure(p, g, data_range=1.0)),
    }
    lpips: Optional[object] = _lpips_metric()
    if lpips is not None:
        out["lpips_alex"] = float(lpips(p, g))
    return out

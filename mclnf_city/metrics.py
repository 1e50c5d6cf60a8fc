"""Image metrics: PSNR, SSIM, and LPIPS only when its weights are already on disk.

LPIPS (torchmetrics, AlexNet) would download torchvision's AlexNet weights on first
use; with no network that is a crash. We look for the file first and report LPIPS as
unavailable (once, with the path to put the file at) when it is absent. AlexNet's strides
and two max-pools leave nothing of an image under `LPIPS_MIN_SIDE` pixels on a side: such
images get no LPIPS, and the report says why, rather than the run dying at a block's end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

_LPIPS = None
_LPIPS_CHECKED = False
LPIPS_MIN_SIDE = 31
"""Conv 11/4 (pad 2), then two 3/2 max-pools: the smallest side that still leaves one value."""


def lpips_weights_path() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def lpips_status(smallest_side: Optional[int] = None) -> str:
    """Whether LPIPS is reported, and why not; `smallest_side`: of the images scored."""
    path = lpips_weights_path()
    if not path.exists():
        return f"unavailable (AlexNet weights not found at {path}; no download is attempted)"
    if smallest_side is not None and smallest_side < LPIPS_MIN_SIDE:
        return f"skipped on images under {LPIPS_MIN_SIDE} px on a side (smallest here: {smallest_side} px; AlexNet's pooling leaves nothing)"
    return "available"


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
    """pred, gt: [H, W, 3] in [0, 1] -> psnr, ssim, colour_error (and lpips_alex when available)."""
    from torchmetrics.functional import structural_similarity_index_measure

    p = pred.clamp(0, 1).permute(2, 0, 1)[None].float().cpu()
    g = gt.permute(2, 0, 1)[None].float().cpu()
    mse = torch.mean((p - g) ** 2)
    out: Dict[str, float] = {
        "psnr": float(-10.0 * torch.log10(mse.clamp_min(1e-10))),
        "ssim": float(structural_similarity_index_measure(p, g, data_range=1.0)),
        "colour_error": colour_error(pred.clamp(0, 1), gt),
    }
    lpips: Optional[object] = _lpips_metric()
    if lpips is not None and min(p.shape[-2:]) >= LPIPS_MIN_SIDE:
        out["lpips_alex"] = float(lpips(p, g))
    return out


def colour_error(pred: Tensor, gt: Tensor) -> float:
    """How far the render's mean colour is from the photo's: the largest relative difference of a
    channel's mean (0.05 = one channel 5 % too dark or too bright); pred, gt [..., 3]. Blur and
    noise do not move it; exposure, a wrong appearance embedding, fog or a black view do."""
    mean_pred, mean_gt = pred.reshape(-1, 3).float().mean(0), gt.reshape(-1, 3).float().mean(0)
    return float(((mean_pred - mean_gt).abs() / mean_gt.clamp_min(1e-3)).max())


def mean_metrics(per_view: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Each metric's mean over the views that have it (LPIPS may be missing on small views)."""
    keys: List[str] = list(dict.fromkeys(k for m in per_view for k in m))
    return {k: sum(m[k] for m in per_view if k in m) / sum(k in m for m in per_view) for k in keys}

"""Routing samples to blocks and compositing them in one volume-rendering pass.

`route` sends every sample to exactly one module (the owner of the region that holds
it, or none); `composite` is the volume-rendering sum over all samples of a ray, so a
ray that crosses three blocks is rendered once, not three times and blended.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from mclnf_city.fields import BlockField


def composite(weights: Tensor, rgbs: Tensor, background: Tensor) -> Tuple[Tensor, Tensor]:
    """rgb = sum_i w_i c_i + (1 - sum_i w_i) * background.

    Args:
        weights: [R, S, 1] from `RaySamples.get_weights` (alpha compositing weights).
        rgbs: [R, S, 3]; background: [R, 3].
    Returns:
        rgb [R, 3], accumulation [R, 1].
    """
    accumulation = weights.sum(dim=-2)
    rgb = (weights * rgbs).sum(dim=-2) + (1.0 - accumulation) * background
    return rgb, accumulation


def composite_reference(densities: Tensor, rgbs: Tensor, deltas: Tensor, background: Tensor) -> Tensor:
    """Plain per-sample loop of the emission-absorption model (test reference, slow)."""
    num_rays, num_samples = densities.shape[:2]
    out = torch.empty(num_rays, 3, dtype=rgbs.dtype)
    for r in range(num_rays):
        transmittance = 1.0
        color = torch.zeros(3, dtype=rgbs.dtype)
        for s in range(num_samples):
            alpha = 1.0 - torch.exp(-densities[r, s, 0] * deltas[r, s, 0])
            color = color + transmittance * alpha * rgbs[r, s]
            transmittance = transmittance * (1.0 - alpha)
        out[r] = color + transmittance * background[r]
    return out


def route(
    owners: Tensor,
    module_of: Callable[[int], Optional[BlockField]],
    evaluate: Callable[[BlockField, Tensor], Tuple[Tensor, ...]],
    out_dims: Tuple[int, ...],
    like: Tensor,
) -> Tuple[Tensor, ...]:
    """Evaluate each sample with the module that owns it.

    Args:
        owners: [N] owner id per sample (block id, or -1).
        module_of: owner id -> module, or None (the sample is empty space: zeros).
        evaluate: (module, sample indices [K]) -> tuple of [K, d] outputs.
        out_dims: the d of each output.
        like: dtype/device reference.
    Returns:
        tuple of [N, d] outputs, zero where no module owns the sample.
    """
    outs = tuple(torch.zeros(len(owners), d, dtype=like.dtype, device=like.device) for d in out_dims)
    for owner in torch.unique(owners).tolist():
        module = module_of(owner)
        if module is None:
            continue
        idx = torch.nonzero(owners == owner).flatten()
        for out, value in zip(outs, evaluate(module, idx)):
            out[idx] = value.to(out.dtype)
    return outs

"""FIM-NeRF: per-ray Fisher information scores of the active block, and what they drive.

The paper's exact formula is not available to us; this is our definition.

**Score.** For ray r with photometric loss ℓ_r = mean_c (Ĉ_r,c − C_r,c)², the score is the
trace of its empirical Fisher with respect to the active block's parameters θ:

    s_r = tr(∇_θ ℓ_r ∇_θ ℓ_r^T) = ‖∇_θ ℓ_r‖².

It is large where the block is both wrong and sensitive: the rays the next steps can
learn most from. `exact_fisher` computes it with per-ray gradients (slow; for checking).
`last_layer_fisher` computes it in closed form for the last linear layer of each head
(colour, far field, and the density row of the density head), from quantities the
forward pass already has. For the colour layer, with c_ri = sigmoid(W h_ri + b) the
colour of sample i, w_ri its compositing weight and g_r = ∂ℓ_r/∂Ĉ_r = 2(Ĉ_r − C_r)/3,

    ∂ℓ_r/∂[W b] = Σ_i δ_ri [h_ri; 1]^T,   δ_ri = g_r ⊙ w_ri ⊙ c_ri ⊙ (1 − c_ri),

and the far-field and density layers follow the same pattern with ∂Ĉ/∂(their outputs).
tests/test_fisher.py checks the closed form equals autograd on those layers, and that it
ranks rays like the exact score over all parameters.

**Uses** (each can be switched off):
- loss re-weighting: ℓ = mean_r ω_r ℓ_r with ω_r = clamp(s_r / mean(s), lo, hi), detached;
- ray sampling: pixel p of the active block is drawn with probability
  u/N + (1 − u) s_p / Σ s, from a per-pixel score buffer refreshed with the scores of the
  rays just trained on (pixels not scored yet count as the largest score seen, so they
  are visited early). u > 0 keeps every pixel's probability above zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Tuple

import torch
from torch import Tensor


@dataclass
class FisherConfig:
    """FIM-NeRF: Fisher-information scores of rays, for loss weights and ray sampling."""

    loss_weighting: bool = False
    """Weight each ray's loss by its clamped, detached relative score."""
    sampling: bool = False
    """Draw rays in proportion to their score (mixed with uniform) from a per-pixel score buffer."""
    score: Literal["last_layer", "exact"] = "last_layer"
    """last_layer: closed form on the colour head's last layer (fast); exact: per-ray gradients of every parameter (slow, for checking)."""
    weight_range: Tuple[float, float] = (0.5, 2.0)
    """Bounds of the loss weights (relative to the batch's mean score)."""
    uniform_fraction: float = 0.5
    """Share of the sampling probability spread uniformly over the block's pixels (> 0: every pixel can be drawn)."""

    @property
    def enabled(self) -> bool:
        return self.loss_weighting or self.sampling


def last_layer_fisher(
    residual: Tensor,
    weights: Tensor,
    sample_rgb: Tensor,
    color_in: Tensor,
    density: Tensor,
    deltas: Tensor,
    density_in: Tensor,
    background: Tensor,
    far_in: Tensor,
    hit: Tensor,
) -> Tensor:
    """Closed-form Fisher trace of the heads' last layers (weights and biases), per ray.

    The last layers are the colour head's, the far-field head's, and the density row of the
    density head's. An input ``*_in`` is the layer's input with a constant 1 appended
    ([h; 1], for the bias), all zero where another block answers (it holds none of these
    parameters).

    Args:
        residual: [R, 3] rendered minus true colour.
        weights, density, deltas: [R, S, 1] compositing weights, densities, sample lengths.
        sample_rgb: [R, S, 3] sample colours (sigmoid outputs).
        color_in, density_in: [R, S, H + 1] inputs of the colour / density last layers.
        background, far_in: [R, 3] far-field colour and [R, H + 1] its last layer's input.
        hit: [R] whether the ray crosses the city box (else no sample counts).
    Returns:
        [R] scores (detached).
    """
    with torch.no_grad():
        g = 2.0 * residual / residual.shape[-1]  # ∂ℓ/∂Ĉ
        # colour: ∂Ĉ/∂c_i = w_i; sigmoid' = c (1 - c)
        delta = g[:, None, :] * weights * sample_rgb * (1.0 - sample_rgb)
        score = torch.einsum("rsc,rsh->rch", delta, color_in).square().sum(dim=(1, 2))
        # far field: ∂Ĉ/∂bg = T_end = 1 - Σ w
        t_end = 1.0 - weights.sum(dim=1)  # [R, 1]
        delta_bg = g * t_end * background * (1.0 - background)
        score += delta_bg.square().sum(-1) * far_in.square().sum(-1)
        # density: ∂Ĉ/∂σ_i = Δ_i (T_{i+1} c_i - Σ_{j>i} w_j c_j - T_end bg); σ = exp(x - 1): ∂σ/∂x = σ
        wc = weights * sample_rgb
        after = wc.sum(dim=1, keepdim=True) - torch.cumsum(wc, dim=1) + (t_end * background)[:, None, :]
        t_next = 1.0 - torch.cumsum(weights, dim=1)
        dc_dsigma = deltas * (t_next * sample_rgb - after)  # [R, S, 3]
        eps = (dc_dsigma * g[:, None, :]).sum(-1, keepdim=True) * density * hit[:, None, None]
        score += torch.einsum("rs,rsh->rh", eps[..., 0], density_in).square().sum(-1)
        return score


def exact_fisher(per_ray_loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """‖∇_θ ℓ_r‖² for every ray r, from per-ray gradients (one backward pass per ray)."""
    scores = torch.zeros(len(per_ray_loss), dtype=per_ray_loss.dtype, device=per_ray_loss.device)
    params = [p for p in params if p.requires_grad]
    for r in range(len(per_ray_loss)):
        grads = torch.autograd.grad(per_ray_loss[r], params, retain_graph=True, allow_unused=True)
        scores[r] = sum(g.square().sum() for g in grads if g is not None)
    return scores


def fisher_loss_weights(scores: Tensor, bounds: Tuple[float, float]) -> Tensor:
    """ω_r = clamp(s_r / mean(s), lo, hi), detached."""
    lo, hi = bounds
    if not 0 < lo <= 1 <= hi:
        raise ValueError(f"--pipeline.fisher.weight-range must satisfy 0 < lo <= 1 <= hi, got {bounds}")
    scores = scores.detach()
    return (scores / scores.mean().clamp_min(1e-20)).clamp(lo, hi)


class ScoreBuffer:
    """Per-pixel scores of one block's training pixels, and draws ∝ score mixed with uniform."""

    def __init__(self, num_pixels: int, uniform_fraction: float):
        if not 0.0 < uniform_fraction <= 1.0:
            raise ValueError(f"--pipeline.fisher.uniform-fraction must be in (0, 1], got {uniform_fraction}")
        self.uniform_fraction = uniform_fraction
        self.scores = torch.full((num_pixels,), float("nan"))

    def probabilities(self) -> Tensor:
        seen = ~torch.isnan(self.scores)
        n = len(self.scores)
        if not seen.any():
            return torch.full((n,), 1.0 / n)
        filled = torch.where(seen, self.scores, self.scores[seen].max())  # unseen: optimistic
        total = filled.sum()
        proportional = filled / total if total > 0 else torch.full((n,), 1.0 / n)
        return self.uniform_fraction / n + (1.0 - self.uniform_fraction) * proportional

    def sample(self, num: int, generator: torch.Generator) -> Tensor:
        """Positions in the pixel pool, drawn with replacement (inverse CDF: no 2^24 category limit)."""
        cdf = torch.cumsum(self.probabilities().double(), 0)
        u = torch.rand(num, generator=generator, dtype=torch.float64) * cdf[-1]
        return torch.searchsorted(cdf, u, right=True).clamp_max(len(cdf) - 1)

    def update(self, positions: Tensor, scores: Tensor) -> None:
        self.scores[positions.cpu()] = scores.detach().float().cpu()

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

Variants of the sampling, for the study in tools/bench/fisher_study.py:
- importance correction: each drawn ray's loss weighted by clamp(1 / (N p), lo, hi), so the
  weighted loss estimates the block's mean loss instead of the score-weighted one;
- score freshness: stored scores relax toward their mean by a factor each step (decay < 1),
  instead of changing only when their pixel is drawn again;
- granularity: one score per pixel, per 16 × 16 patch of an image, or per image (a drawn
  ray refreshes its group's score with the mean score of the group's rays in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Tuple

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
    importance_correction: bool = False
    """With sampling: weight each ray's loss by 1 / (N p) of its draw, clamped to the weight range (the loss then estimates the block's mean loss, not the score-weighted one)."""
    score_decay: float = 1.0
    """With sampling: every step the stored scores relax toward their mean by this factor (1: a score changes only when its pixel is drawn again)."""
    granularity: Literal["pixel", "patch", "image"] = "pixel"
    """With sampling: what one score covers, a pixel, a 16 x 16 patch of an image, or a whole image."""

    @property
    def enabled(self) -> bool:
        return self.loss_weighting or self.sampling

    def check(self) -> None:
        """Refuse settings that would silently do nothing or break the sampler."""
        if not self.sampling and (self.importance_correction or self.score_decay != 1.0 or self.granularity != "pixel"):
            raise ValueError("--pipeline.fisher.importance-correction, --pipeline.fisher.score-decay and "
                             "--pipeline.fisher.granularity act on the sampling: set --pipeline.fisher.sampling True")
        if not 0.0 <= self.score_decay <= 1.0:
            raise ValueError(f"--pipeline.fisher.score-decay must be in [0, 1], got {self.score_decay}")
        lo, hi = self.weight_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"--pipeline.fisher.weight-range must satisfy 0 < lo <= 1 <= hi, got {self.weight_range}")

PATCH = 16  # pixels on a side of a score patch (granularity "patch")


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


def score_groups(pixels: Tensor, granularity: str) -> Optional[Tensor]:
    """Group id of each pool pixel ([N] long) from its (image, row, column) [N, 3]; None per pixel."""
    if granularity == "pixel":
        return None
    if granularity == "image":
        keys = pixels[:, 0]
    elif granularity == "patch":
        keys = torch.stack([pixels[:, 0], pixels[:, 1] // PATCH, pixels[:, 2] // PATCH], dim=-1)
    else:
        raise ValueError(f"unknown FIM-NeRF granularity {granularity!r}: pixel, patch or image")
    return torch.unique(keys, dim=0, return_inverse=True)[1].flatten() if keys.dim() > 1 else torch.unique(keys, return_inverse=True)[1]


class ScoreBuffer:
    """Scores of one block's training pixels (one per pixel, or one per group of pixels), and
    draws ∝ score mixed with uniform."""

    def __init__(self, num_pixels: int, uniform_fraction: float, groups: Optional[Tensor] = None, decay: float = 1.0):
        if not 0.0 < uniform_fraction <= 1.0:
            raise ValueError(f"--pipeline.fisher.uniform-fraction must be in (0, 1], got {uniform_fraction}")
        self.uniform_fraction, self.decay, self.num_pixels = uniform_fraction, decay, num_pixels
        self.groups = groups
        self.scores = torch.full((num_pixels if groups is None else int(groups.max()) + 1,), float("nan"))

    def probabilities(self) -> Tensor:
        """[N] draw probability of every pixel."""
        n = self.num_pixels
        seen = ~torch.isnan(self.scores)
        if not seen.any():
            return torch.full((n,), 1.0 / n)
        filled = torch.where(seen, self.scores, self.scores[seen].max())  # unseen: optimistic
        per_pixel = filled if self.groups is None else filled[self.groups]
        total = per_pixel.sum()
        proportional = per_pixel / total if total > 0 else torch.full((n,), 1.0 / n)
        return self.uniform_fraction / n + (1.0 - self.uniform_fraction) * proportional

    def sample(self, num: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Positions in the pixel pool, drawn with replacement (inverse CDF: no 2^24 category
        limit), and the probability each was drawn with."""
        probabilities = self.probabilities().double()
        cdf = torch.cumsum(probabilities, 0)
        u = torch.rand(num, generator=generator, dtype=torch.float64) * cdf[-1]
        positions = torch.searchsorted(cdf, u, right=True).clamp_max(len(cdf) - 1)
        return positions, (probabilities[positions] / cdf[-1]).float()

    def update(self, positions: Tensor, scores: Tensor) -> None:
        positions, scores = positions.cpu(), scores.detach().float().cpu()
        if self.decay < 1.0:
            seen = ~torch.isnan(self.scores)
            if seen.any():
                self.scores[seen] = self.decay * self.scores[seen] + (1.0 - self.decay) * self.scores[seen].mean()
        if self.groups is None:
            self.scores[positions] = scores
            return
        groups = self.groups[positions]
        total = torch.zeros_like(self.scores).index_add_(0, groups, scores)
        count = torch.zeros_like(self.scores).index_add_(0, groups, torch.ones_like(scores))
        drawn = count > 0
        self.scores[drawn] = total[drawn] / count[drawn]


def importance_weights(draw_probability: Tensor, num_pixels: int, bounds: Tuple[float, float]) -> Tensor:
    """clamp(1 / (N p), lo, hi): the weight that makes a score-driven draw an unbiased estimate of the mean loss."""
    lo, hi = bounds
    return (1.0 / (num_pixels * draw_probability.clamp_min(1e-30))).clamp(lo, hi)

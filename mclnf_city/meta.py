"""Meta-learning of θ_shared with blocks as tasks (MAML family).

Every update works on a dict of parameters and any module evaluated with
`torch.func.functional_call`, so the same code serves a `BlockField` and a toy model in
the tests. A task is a loss function ``loss(module, params, batch)`` plus its support
batches (inner loop) and a query batch (outer loss).

- Reptile:  θ ← θ + ε · mean_i(φ_i − θ)
- FOMAML:   θ ← θ − β · mean_i ∇_φ L_query(φ_i)           (first order: φ_i treated as leaves)
- MAML:     θ ← θ − β · mean_i ∇_θ L_query(φ_i(θ))        (second order, through the inner SGD)

with φ_i = θ after the inner loop: plain SGD steps ``φ ← φ − α ∇ L_support(φ)``.

`CityPipeline` runs `--pipeline.meta.meta-steps` outer steps on the capture's own blocks
before streaming (off by default; the benchmarks page has what it was measured to do).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = Dict[str, Tensor]
LossFn = Callable[[nn.Module, Params, object], Tensor]


def call(module: nn.Module, params: Params, *args, **kwargs):
    """Evaluate module with the given parameters (buffers stay the module's own)."""
    return functional_call(module, params, args, kwargs, strict=False)


def adapt(
    module: nn.Module,
    theta: Params,
    loss_fn: LossFn,
    support: Iterable,
    lr: float,
    create_graph: bool = False,
    optimizer: Literal["sgd", "adam"] = "sgd",
) -> Params:
    """Inner loop: one step per support batch, starting from θ. Returns φ.

    SGD is differentiable (MAML); Adam is what hash grids need in practice (their table
    gradients are tiny), and Reptile only needs the end point, so it may use either.
    """
    if optimizer == "adam":
        params = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
        opt = torch.optim.Adam(list(params.values()), lr=lr, eps=1e-15)
        for batch in support:
            opt.zero_grad()
            loss_fn(module, params, batch).backward()
            opt.step()
        return {k: v.detach() for k, v in params.items()}
    params = dict(theta)
    for batch in support:
        loss = loss_fn(module, params, batch)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        params = {k: (p - lr * g) if g is not None else p for (k, p), g in zip(params.items(), grads)}
    return params


def reptile_update(theta: Params, adapted: Sequence[Params], epsilon: float) -> Params:
    """θ + ε · mean_i(φ_i − θ)."""
    return {k: (v + epsilon * torch.stack([a[k].detach() - v for a in adapted]).mean(0)).detach() for k, v in theta.items()}


def meta_step(
    module: nn.Module,
    theta: Params,
    tasks: Sequence[tuple],
    loss_fn: LossFn,
    algorithm: Literal["reptile", "fomaml", "maml"],
    inner_lr: float,
    outer_lr: float,
    inner_optimizer: Literal["sgd", "adam"] = "sgd",
) -> Params:
    """One outer update of θ from a meta-batch of tasks, each ``(support_batches, query_batch)``."""
    theta = {k: v.detach() for k, v in theta.items()}
    if algorithm == "reptile":
        adapted = [adapt(module, _leaves(theta), loss_fn, support, inner_lr, optimizer=inner_optimizer) for support, _ in tasks]
        return reptile_update(theta, adapted, outer_lr)
    grads: List[Params] = []
    for support, query in tasks:
        start = _leaves(theta)
        phi = adapt(module, start, loss_fn, support, inner_lr, create_graph=algorithm == "maml")
        if algorithm == "fomaml":
            phi = _leaves(phi)
            wrt = phi
        elif algorithm == "maml":
            wrt = start
        else:
            raise ValueError(f"unknown meta-learning algorithm {algorithm!r}")
        loss = loss_fn(module, phi, query)
        g = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
        grads.append({k: gi if gi is not None else torch.zeros_like(v) for (k, v), gi in zip(wrt.items(), g)})
    return {k: v - outer_lr * torch.stack([g[k] for g in grads]).mean(0) for k, v in theta.items()}


def _leaves(params: Params) -> Params:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

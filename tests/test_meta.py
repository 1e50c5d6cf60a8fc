"""Meta-updates of θ_shared against hand-computed steps on a toy field."""

from __future__ import annotations

import torch
from torch import nn

from mclnf_city.meta import adapt, call, meta_step, reptile_update


class Line(nn.Module):
    """y = w x: small enough that every meta-gradient has a closed form."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, x):
        return self.w * x


def mse(module, params, batch):
    x, y = batch
    return torch.mean((call(module, params, x) - y) ** 2)


def grad_w(w, x, y):  # dL/dw of mean (w x - y)^2
    return torch.mean(2 * (w * x - y) * x)


def _task(slope, seed):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(2, 16, generator=g, dtype=torch.float64)
    return [(xs[0], slope * xs[0])], (xs[1], slope * xs[1])


def test_fomaml_matches_hand_computed_step():
    model, w0, alpha, beta = Line(), torch.tensor(0.3, dtype=torch.float64), 0.1, 0.5
    tasks = [_task(2.0, 0), _task(-1.0, 1)]
    new = meta_step(model, {"w": w0}, tasks, mse, "fomaml", alpha, beta)
    expected = []
    for [(xs, ys)], (xq, yq) in tasks:
        w1 = w0 - alpha * grad_w(w0, xs, ys)
        expected.append(grad_w(w1, xq, yq))
    assert torch.allclose(new["w"], w0 - beta * torch.stack(expected).mean(), atol=1e-12)


def test_second_order_maml_matches_hand_computed_step():
    model, w0, alpha, beta = Line(), torch.tensor(0.3, dtype=torch.float64), 0.1, 0.5
    tasks = [_task(2.0, 2), _task(0.5, 3)]
    new = meta_step(model, {"w": w0}, tasks, mse, "maml", alpha, beta)
    expected = []
    for [(xs, ys)], (xq, yq) in tasks:
        w1 = w0 - alpha * grad_w(w0, xs, ys)
        dw1_dw0 = 1 - alpha * torch.mean(2 * xs**2)  # chain rule through the inner step
        expected.append(grad_w(w1, xq, yq) * dw1_dw0)
    assert torch.allclose(new["w"], w0 - beta * torch.stack(expected).mean(), atol=1e-12)


def test_reptile_moves_theta_towards_adapted_weights():
    model = Line()
    theta = {"w": torch.tensor(0.0, dtype=torch.float64)}
    support = [_task(3.0, s)[0][0] for s in range(5)]
    phi = adapt(model, {"w": theta["w"].clone().requires_grad_()}, mse, support, lr=0.2)
    new = reptile_update(theta, [phi], epsilon=0.5)
    assert torch.allclose(new["w"], theta["w"] + 0.5 * (phi["w"].detach() - theta["w"]))
    assert abs(new["w"] - phi["w"]) < abs(theta["w"] - phi["w"])
    stepped = meta_step(model, theta, [(support, None)], mse, "reptile", 0.2, 0.5)
    assert torch.allclose(stepped["w"], new["w"])


def test_meta_learned_init_adapts_faster_on_its_task_family():
    """Tasks y = s x with s near 4: the meta-learned w ends near 4, one step adapts better than from 0."""
    model = Line()
    theta = {"w": torch.tensor(0.0, dtype=torch.float64)}
    for it in range(60):
        tasks = [_task(4.0 + 0.3 * torch.randn(1, generator=torch.Generator().manual_seed(100 * it + k)).item(), it * 7 + k) for k in range(3)]
        theta = meta_step(model, theta, tasks, mse, "reptile", 0.05, 0.3)
    support, query = _task(4.2, 999)
    losses = {}
    for name, start in (("meta", theta["w"]), ("zero", torch.tensor(0.0, dtype=torch.float64))):
        phi = adapt(model, {"w": start.clone().requires_grad_()}, mse, support, lr=0.05)
        losses[name] = float(mse(model, phi, query))
    assert losses["meta"] < 0.1 * losses["zero"], losses


def test_meta_step_runs_on_a_block_field():
    """The same updates apply to a real BlockField (hash grid + heads), first and second order."""
    from mclnf_city.fields import BlockField, BlockFieldSpec

    field = BlockField(BlockFieldSpec(num_levels=2, max_res=32, log2_hashmap_size=8, hidden_dim=8, hidden_dim_color=8,
                                      appearance_embedding_dim=0, far_field_hidden_dim=8), num_images=2)
    g = torch.Generator().manual_seed(0)

    def density_loss(module, params, batch):
        points, target = batch
        density, _ = call(module, params, points, torch.zeros_like(points), None)
        return torch.mean((density - target) ** 2)

    batches = [(torch.rand(64, 3, generator=g), torch.rand(64, 1, generator=g)) for _ in range(3)]
    theta = {k: v.detach().clone() for k, v in field.named_parameters() if not k.startswith(("color_head", "far_field"))}
    for algorithm in ("reptile", "fomaml", "maml"):
        new = meta_step(field, theta, [(batches[:2], batches[2])], density_loss, algorithm, 1e-2, 0.5)
        assert set(new) == set(theta)
        assert all(torch.isfinite(v).all() for v in new.values())
        assert any(not torch.equal(new[k], theta[k]) for k in theta), algorithm

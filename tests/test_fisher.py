"""FIM-NeRF: closed-form scores against autograd, rank agreement with the exact score,
bounded loss weights, and a sampler that can draw every pixel."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_trainer_config
from mclnf_city.fisher import ScoreBuffer, exact_fisher, fisher_loss_weights


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.fixture(scope="module")
def trained_block(tiny_capture, tmp_path_factory):
    """Block 1 of the tiny city after 60 steps with FIM-NeRF sampling and loss weights on."""
    config = tiny_trainer_config(tiny_capture, tmp_path_factory.mktemp("fisher"), steps_per_block=60)
    config.pipeline.fisher.sampling = True
    config.pipeline.fisher.loss_weighting = True
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    model = pipeline.model
    opt = torch.optim.Adam(model.active.parameters(), lr=1e-2, eps=1e-15)
    stats = []
    for step in range(60):
        _, losses, metrics = pipeline.get_train_loss_dict(step)
        opt.zero_grad()
        losses["rgb_loss"].backward()
        opt.step()
        stats.append(metrics["fisher_score_mean"])
    return pipeline, stats


def _batch(pipeline, step=50_000, rays=48):
    dm = pipeline.datamanager
    dm.fisher_uniform_fraction, saved = None, dm.fisher_uniform_fraction  # a plain uniform batch
    try:
        ray_bundle, batch = dm.next_train(step)
    finally:
        dm.fisher_uniform_fraction = saved
    keep = slice(0, rays)
    return ray_bundle[keep], {"image": batch["image"][keep], "indices": batch["indices"][keep]}


def test_training_with_fisher_records_scores(trained_block):
    pipeline, stats = trained_block
    block, buffer = pipeline.datamanager.score_buffer
    assert block == pipeline.stream[0]
    assert all(torch.isfinite(s) and s > 0 for s in stats)
    seen = ~torch.isnan(buffer.scores)
    assert 0 < int(seen.sum()) < len(buffer.scores)  # refreshed where rays were drawn


def test_last_layer_closed_form_equals_autograd(trained_block):
    """The proxy is exact for what it claims: the Fisher trace of the heads' last layers."""
    pipeline, _ = trained_block
    model = pipeline.model
    ray_bundle, batch = _batch(pipeline)
    torch.manual_seed(0)
    outputs = model(ray_bundle)
    proxy = model.fisher_scores(outputs, batch)
    per_ray = torch.mean((outputs["rgb"] - batch["image"]) ** 2, dim=-1)
    field = model.active
    layers = [*field.color_out.parameters(), *field.far_field_out.parameters()]
    colour = exact_fisher(per_ray, layers)
    # density_out's density row only (its other rows feed the colour head, not in the proxy)
    density_row = torch.zeros(len(per_ray))
    for r in range(len(per_ray)):
        gw, gb = torch.autograd.grad(per_ray[r], [field.density_out.weight, field.density_out.bias], retain_graph=True)
        density_row[r] = gw[0].square().sum() + gb[0].square()
    reference = colour + density_row
    assert (reference > 0).all()
    assert torch.allclose(proxy, reference, rtol=1e-3, atol=1e-12)


def test_proxy_ranks_rays_like_the_exact_score(trained_block):
    """Spearman >= 0.8 between the last-layer proxy and the full per-ray Fisher trace."""
    pipeline, _ = trained_block
    model = pipeline.model
    ray_bundle, batch = _batch(pipeline, step=60_000, rays=64)
    torch.manual_seed(1)
    outputs = model(ray_bundle)
    proxy = model.fisher_scores(outputs, batch)
    exact = model.fisher_scores(outputs, batch, exact=True)
    rho = spearman(proxy, exact)
    print(f"Spearman(last-layer proxy, exact) = {rho:.3f} on {len(proxy)} rays")
    assert rho >= 0.8


def test_loss_weights_stay_in_bounds_and_are_detached():
    scores = torch.cat([torch.zeros(5), torch.rand(100) ** 8 * 1e6, torch.tensor([1e30])]).requires_grad_(True)
    weights = fisher_loss_weights(scores, (0.5, 2.0))
    assert not weights.requires_grad
    assert float(weights.min()) == 0.5 and float(weights.max()) == 2.0
    assert ((weights >= 0.5) & (weights <= 2.0)).all()
    with pytest.raises(ValueError, match="weight-range"):
        fisher_loss_weights(scores, (1.5, 2.0))


def test_sampler_draws_every_pixel_with_nonzero_probability():
    buffer = ScoreBuffer(1000, uniform_fraction=0.2)
    assert torch.allclose(buffer.probabilities(), torch.full((1000,), 1e-3))
    buffer.update(torch.arange(500), torch.zeros(500))  # scored zero: uniform share only
    buffer.update(torch.tensor([7]), torch.tensor([1e9]))  # one huge score
    p = buffer.probabilities()
    assert torch.isclose(p.sum(), torch.tensor(1.0))
    assert (p >= 0.2 / 1000 * (1 - 1e-6)).all()
    assert p[600] == p[7] > p[0]  # unseen pixels count as the largest score seen
    draws = buffer.sample(200_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=1000).double()
    expected = p.double() * len(draws)
    assert torch.allclose(counts[7], expected[7], rtol=0.02)
    assert abs(counts[:500].sum() - expected[:500].sum()) < 5 * expected[:500].sum().sqrt()


def test_sampler_rejects_zero_uniform_fraction():
    with pytest.raises(ValueError, match="uniform-fraction"):
        ScoreBuffer(10, uniform_fraction=0.0)

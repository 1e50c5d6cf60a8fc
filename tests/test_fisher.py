"""FIM-NeRF: closed-form scores against autograd, rank agreement with the exact score,
bounded loss weights, and a sampler that can draw every pixel."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_trainer_config
from mclnf_city.fisher import FisherConfig, ScoreBuffer, exact_fisher, fisher_loss_weights, importance_weights, score_groups
from mclnf_city.prior import MetaLearningConfig
from fisher_study import rank_correlation  # the study's own measure, tested in test_bench_fisher_study


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
    dm.fisher, saved = None, dm.fisher  # a plain uniform batch
    try:
        ray_bundle, batch = dm.next_train(step)
    finally:
        dm.fisher = saved
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
    rho = rank_correlation(proxy, exact)
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
    draws, drawn_with = buffer.sample(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(drawn_with, p[draws])
    counts = torch.bincount(draws, minlength=1000).double()
    expected = p.double() * len(draws)
    assert torch.allclose(counts[7], expected[7], rtol=0.02)
    assert abs(counts[:500].sum() - expected[:500].sum()) < 5 * expected[:500].sum().sqrt()


def test_sampler_rejects_zero_uniform_fraction():
    with pytest.raises(ValueError, match="uniform-fraction"):
        ScoreBuffer(10, uniform_fraction=0.0)


def test_importance_correction_makes_the_weighted_loss_an_unbiased_mean():
    """E over score-driven draws of w(p) * loss = the block's mean loss, when no weight is clamped."""
    n = 50
    buffer = ScoreBuffer(n, uniform_fraction=0.3)
    buffer.update(torch.arange(n), torch.linspace(0.1, 5.0, n))
    losses = torch.rand(n, generator=torch.Generator().manual_seed(3)).double()
    p = buffer.probabilities().double()
    weights = importance_weights(p, n, (1e-6, 1e6)).double()
    assert torch.isclose((p * weights * losses).sum(), losses.mean())
    positions, drawn_with = buffer.sample(400_000, torch.Generator().manual_seed(4))
    estimate = (importance_weights(drawn_with, n, (1e-6, 1e6)).double() * losses[positions]).mean()
    assert abs(estimate - losses.mean()) < 0.01 * losses.mean()
    assert float(importance_weights(torch.tensor([1e-9, 1.0]), n, (0.5, 2.0)).max()) == 2.0  # clamped


def test_group_scores_spread_over_their_pixels():
    pixels = torch.tensor([[0, 0, 0], [0, 0, 20], [0, 17, 3], [1, 0, 0], [1, 5, 5]])
    image = score_groups(pixels, "image")
    patch = score_groups(pixels, "patch")
    assert image.tolist() == [0, 0, 0, 1, 1]
    assert patch[0] == patch[2 - 2] and len(set(patch.tolist())) == 4 and patch[3] == patch[4]
    assert score_groups(pixels, "pixel") is None
    buffer = ScoreBuffer(5, uniform_fraction=0.5, groups=image)
    buffer.update(torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))  # image 0 scored 2 (mean of its rays)
    buffer.update(torch.tensor([3]), torch.tensor([6.0]))
    p = buffer.probabilities()
    assert torch.isclose(p.sum(), torch.tensor(1.0))
    assert torch.allclose(p[:3], p[0].expand(3)) and torch.allclose(p[3:], p[3].expand(2))
    total = 3 * 2.0 + 2 * 6.0
    assert torch.isclose(p[3], torch.tensor(0.5 / 5 + 0.5 * 6.0 / total))


def test_score_decay_relaxes_stale_scores_toward_their_mean():
    buffer = ScoreBuffer(4, uniform_fraction=0.5, decay=0.5)
    buffer.update(torch.arange(4), torch.tensor([0.0, 0.0, 0.0, 8.0]))
    buffer.update(torch.tensor([0]), torch.tensor([1.0]))  # the others relax: mean 2
    assert torch.allclose(buffer.scores, torch.tensor([1.0, 1.0, 1.0, 5.0]))
    fresh = ScoreBuffer(4, uniform_fraction=0.5)
    fresh.update(torch.arange(4), torch.tensor([0.0, 0.0, 0.0, 8.0]))
    fresh.update(torch.tensor([0]), torch.tensor([1.0]))
    assert fresh.scores.tolist() == [1.0, 0.0, 0.0, 8.0]


def test_sampling_variants_without_sampling_are_refused():
    for bad in (dict(importance_correction=True), dict(score_decay=0.9), dict(granularity="image")):
        with pytest.raises(ValueError, match="fisher.sampling"):
            FisherConfig(**bad).check()
    with pytest.raises(ValueError, match="score-decay"):
        FisherConfig(sampling=True, score_decay=1.5).check()
    FisherConfig(sampling=True, importance_correction=True, score_decay=0.9, granularity="patch").check()
    with pytest.raises(ValueError, match="meta-steps"):
        MetaLearningConfig(fisher_weighting=True).check()
    MetaLearningConfig(fisher_weighting=True, meta_steps=1).check()


def test_patch_scores_with_importance_correction_in_training(trained_block):
    """The variants run in the stream: one score per patch, and every ray's loss weighted by
    the clamped product of its FIM weight and 1 / (N p)."""
    pipeline, _ = trained_block
    fisher, dm = pipeline.config.fisher, pipeline.datamanager
    saved = (fisher.granularity, fisher.importance_correction, fisher.score_decay, dm.score_buffer)
    seen = []
    real_loss = pipeline.model.get_loss_dict
    pipeline.model.get_loss_dict = lambda outputs, batch, metrics=None: seen.append(batch) or real_loss(outputs, batch, metrics)
    try:
        fisher.granularity, fisher.importance_correction, fisher.score_decay = "patch", True, 0.9
        dm.score_buffer = None
        for step in range(3):
            pipeline.get_train_loss_dict(step)
        _, buffer = dm.score_buffer
        assert buffer.groups is not None and len(buffer.scores) < buffer.num_pixels
        assert 0 < int((~torch.isnan(buffer.scores)).sum()) < len(buffer.scores)
        for batch in seen:
            w = batch["ray_weights"]
            assert w.shape == batch["draw_probability"].shape and (w >= 0.25 - 1e-6).all() and (w <= 4.0 + 1e-6).all()
        assert not torch.allclose(seen[-1]["ray_weights"], torch.ones_like(seen[-1]["ray_weights"]))
    finally:
        pipeline.model.get_loss_dict = real_loss
        fisher.granularity, fisher.importance_correction, fisher.score_decay, dm.score_buffer = saved


def test_meta_inner_loop_weights_each_ray_by_its_score(trained_block):
    """--pipeline.meta.fisher-weighting: a meta-learning task's loss is the per-ray squared error
    weighted by the same rays' bounded FIM-NeRF scores (the weights block training uses)."""
    pipeline, _ = trained_block
    model, dm, b = pipeline.model, pipeline.datamanager, pipeline.stream[0]
    params = {k: v.detach().clone() for k, v in model.active.named_parameters()}  # the trained block's
    saved_state = {k: v.clone() for k, v in model.active.state_dict().items()}  # a task resets the slot to θ_shared
    model.train()
    dm.fisher, saved_fisher = None, dm.fisher  # uniform draws: the same rays at the same step
    model.fisher_features = False  # as when FIM-NeRF is off for the stream
    step = 10_000_321

    def task_loss(weighted: bool) -> torch.Tensor:
        pipeline.config.meta.fisher_weighting = weighted
        torch.manual_seed(0)
        with torch.no_grad():
            return pipeline.task_loss(params, b, step)

    try:
        plain, weighted = task_loss(False), task_loss(True)
        assert model.fisher_features is False, "the meta-learning loss must leave the stream's setting alone"
        torch.manual_seed(0)
        pipeline.stream.activate(b)
        ray_bundle, data = dm.next_train(step)
        model.active.load_state_dict(saved_state)
        model.fisher_features = True
        with torch.no_grad():
            outputs = model(ray_bundle)
        per_ray = torch.mean((outputs["rgb"] - data["image"][..., :3]) ** 2, dim=-1)
        w = fisher_loss_weights(model.fisher_scores(outputs, data), pipeline.config.fisher.weight_range)
    finally:
        pipeline.config.meta.fisher_weighting = False
        dm.fisher, model.fisher_features = saved_fisher, True
        model.active.load_state_dict(saved_state)
    assert torch.allclose(plain, per_ray.mean(), rtol=1e-5)
    assert torch.allclose(weighted, (per_ray * w).mean(), rtol=1e-5)
    assert w.min() < 1 < w.max() and not torch.allclose(weighted, plain)

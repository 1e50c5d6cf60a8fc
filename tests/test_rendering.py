"""Compositing against a plain reference, and routing of samples to blocks."""

from __future__ import annotations

import torch

from nerfstudio.cameras.rays import Frustums, RaySamples

from mclnf_city.rendering import composite, composite_reference, route


def _ray_samples(starts: torch.Tensor, ends: torch.Tensor) -> RaySamples:
    r, s = starts.shape[:2]
    return RaySamples(
        frustums=Frustums(
            origins=torch.zeros(r, s, 3, dtype=starts.dtype),
            directions=torch.tensor([0.0, 0.0, 1.0], dtype=starts.dtype).expand(r, s, 3),
            starts=starts,
            ends=ends,
            pixel_area=torch.ones(r, s, 1, dtype=starts.dtype),
        ),
        deltas=ends - starts,
    )


def test_composite_matches_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    r, s = 7, 19
    edges = torch.sort(torch.rand(r, s + 1, generator=g, dtype=torch.float64) * 4, dim=-1).values
    samples = _ray_samples(edges[:, :-1, None], edges[:, 1:, None])
    density = (torch.rand(r, s, 1, generator=g, dtype=torch.float64) * 3).requires_grad_()
    rgbs = torch.rand(r, s, 3, generator=g, dtype=torch.float64).requires_grad_()
    background = torch.rand(r, 3, generator=g, dtype=torch.float64)
    rgb, acc = composite(samples.get_weights(density), rgbs, background)
    ref = composite_reference(density, rgbs, samples.deltas, background)
    assert torch.allclose(rgb, ref, atol=1e-10)
    assert torch.all(acc <= 1 + 1e-12) and torch.all(acc >= 0)
    w = torch.rand(r, 3, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((rgb * w).sum(), (density, rgbs))
    g2 = torch.autograd.grad((ref * w).sum(), (density, rgbs))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)


def test_empty_ray_shows_background():
    samples = _ray_samples(torch.zeros(1, 4, 1), torch.ones(1, 4, 1))
    rgb, acc = composite(samples.get_weights(torch.zeros(1, 4, 1)), torch.rand(1, 4, 3), torch.tensor([[0.2, 0.4, 0.6]]))
    assert torch.allclose(rgb, torch.tensor([[0.2, 0.4, 0.6]])) and acc.item() == 0


class _Recorder:
    """A fake module that records which samples it was asked to evaluate."""

    def __init__(self, tag: float):
        self.tag, self.seen = tag, []


def test_route_evaluates_every_sample_with_its_owner_exactly_once():
    g = torch.Generator().manual_seed(0)
    owners = torch.randint(-1, 5, (1000,), generator=g)
    modules = {b: _Recorder(float(b)) for b in range(5) if b != 3}  # block 3 has no module: empty space

    def evaluate(module, idx):
        module.seen.append(idx.clone())
        return (torch.full((len(idx), 1), module.tag), torch.full((len(idx), 3), module.tag + 0.5))

    density, rgb = route(owners, lambda k: modules.get(k), evaluate, (1, 3), torch.zeros(1))
    seen = torch.cat([i for m in modules.values() for i in m.seen])
    assert len(seen) == len(torch.unique(seen)), "a sample was evaluated twice"
    for b, m in modules.items():
        assert len(m.seen) == 1 and torch.equal(torch.sort(m.seen[0]).values, torch.nonzero(owners == b).flatten())
    owned = torch.isin(owners, torch.tensor(list(modules)))
    assert torch.equal(density[owned, 0], owners[owned].float())
    assert torch.all(density[~owned] == 0) and torch.all(rgb[~owned] == 0)

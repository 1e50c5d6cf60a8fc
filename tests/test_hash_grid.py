"""The fused CPU hash-grid kernel against its reference, nerfstudio's torch HashEncoding (gsplat-style)."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding

from mclnf_city import hash_grid

pytestmark = pytest.mark.skipif(hash_grid.kernel() is None, reason=f"no fused kernel: {hash_grid.kernel_status()}")


def _encoding(levels=6, log2=10, feats=2, max_res=300, seed=0) -> HashEncoding:
    torch.manual_seed(seed)
    enc = HashEncoding(num_levels=levels, min_res=4, max_res=max_res, log2_hashmap_size=log2,
                       features_per_level=feats, implementation="torch")
    with torch.no_grad():
        enc.hash_table.normal_()  # O(1) entries: errors are not hidden by the 1e-3 init scale
    return enc


def _coords(n=4000, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    # Points on lattice planes and on the cube's faces: floor == ceil there.
    x[:200] = torch.randint(0, 9, (200, 3), generator=g) / 8.0
    x[200:210] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.0, 0.25], [0.5, 0.5, 0.5]] * 2)
    return x


@pytest.mark.parametrize("levels,log2,feats,max_res", [(6, 10, 2, 300), (12, 15, 2, 1024), (3, 8, 4, 64)])
def test_forward_matches_reference(levels, log2, feats, max_res):
    enc, x = _encoding(levels, log2, feats, max_res), _coords()
    ref = enc.pytorch_fwd(x)
    fused = hash_grid.encode(enc, x)
    assert fused.shape == ref.shape == (len(x), levels * feats)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels,log2,feats,max_res", [(6, 10, 2, 300), (12, 15, 2, 1024), (3, 8, 4, 64)])
def test_table_gradient_matches_reference(levels, log2, feats, max_res):
    enc, x = _encoding(levels, log2, feats, max_res), _coords()
    g = torch.randn(len(x), levels * feats, generator=torch.Generator().manual_seed(2))
    (ref,) = torch.autograd.grad(enc.pytorch_fwd(x), enc.hash_table, g)
    (fused,) = torch.autograd.grad(hash_grid.encode(enc, x), enc.hash_table, g)
    assert (ref != 0).sum() > 1000  # many rows touched, collisions included (small tables)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


def test_gradient_is_deterministic():
    enc, x = _encoding(), _coords()
    g = torch.randn(len(x), enc.get_out_dim())
    grads = [torch.autograd.grad(hash_grid.encode(enc, x), enc.hash_table, g)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_coordinate_gradient_falls_back_to_reference():
    """Only the table's gradient is fused; a coordinate gradient (e.g. for normals) takes the reference."""
    enc = _encoding()
    x = _coords(500).requires_grad_(True)
    (dx_fused,) = torch.autograd.grad(hash_grid.encode(enc, x).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(enc.pytorch_fwd(x_ref).sum(), x_ref)
    assert torch.equal(dx_fused, dx_ref)


def test_block_field_trains_the_same_on_both_paths(monkeypatch):
    """A few Adam steps of a BlockField: fused and reference paths stay within float noise."""
    from mclnf_city.fields import BlockField, BlockFieldSpec

    spec = BlockFieldSpec(num_levels=4, max_res=64, log2_hashmap_size=10, hidden_dim=16, hidden_dim_color=16,
                          appearance_embedding_dim=0, far_field_hidden_dim=8)
    g = torch.Generator().manual_seed(5)
    pos, dirs = torch.rand(2000, 3, generator=g) * 2 - 1, torch.nn.functional.normalize(torch.randn(2000, 3, generator=g), dim=-1)
    target = torch.rand(2000, 3, generator=g)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(hash_grid, "kernel", lambda: None)
        torch.manual_seed(0)
        field = BlockField(spec, num_images=1)
        opt = torch.optim.Adam(field.parameters(), lr=1e-2)
        for _ in range(5):
            _, rgb = field(pos, dirs, None)
            loss = ((rgb - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append(field.encoding.hash_table.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_second_order_gradient_matches_reference():
    """A Hessian-vector product through the table (what second-order MAML needs) is fused too."""
    enc, x = _encoding(), _coords(1000)
    c = torch.rand(len(x), enc.get_out_dim(), generator=torch.Generator().manual_seed(3))
    v = torch.randn_like(enc.hash_table)
    results = []
    for forward in (lambda t: hash_grid.encode(enc, x), lambda t: enc.pytorch_fwd(x)):
        loss = (forward(None) ** 2 * c).sum()  # nonlinear in the table: its Hessian is not zero
        (g,) = torch.autograd.grad(loss, enc.hash_table, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), enc.hash_table)
        results.append(hv)
    assert results[1].abs().sum() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_second_order_maml_on_a_block_field_matches_the_reference(monkeypatch):
    """`--pipeline.meta.algorithm maml` is second order through the hash table on the fused path."""
    from mclnf_city.fields import BlockField, BlockFieldSpec
    from mclnf_city.meta import call, meta_step

    spec = BlockFieldSpec(num_levels=4, max_res=64, log2_hashmap_size=10, hidden_dim=16, hidden_dim_color=16,
                          appearance_embedding_dim=0, far_field_hidden_dim=8)
    g = torch.Generator().manual_seed(7)

    def batch(n=600):
        return (torch.rand(n, 3, generator=g) * 2 - 1, torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1),
                torch.rand(n, 3, generator=g))

    def loss(module, params, b):
        density, rgb = call(module, params, b[0], b[1], None)
        return ((rgb - b[2]) ** 2).sum(-1).mean() + (density**2).mean()

    tasks = [([batch(), batch()], batch()) for _ in range(2)]
    torch.manual_seed(0)
    field = BlockField(spec, num_images=1)
    with torch.no_grad():
        field.encoding.hash_table.normal_(0, 0.1)
    theta = {k: v.detach().clone() for k, v in field.named_parameters()}
    fused = meta_step(field, theta, tasks, loss, "maml", inner_lr=1.0, outer_lr=1.0)
    first = meta_step(field, theta, tasks, loss, "fomaml", inner_lr=1.0, outer_lr=1.0)
    monkeypatch.setattr(hash_grid, "kernel", lambda: None)
    reference = meta_step(field, theta, tasks, loss, "maml", inner_lr=1.0, outer_lr=1.0)
    key = "encoding.hash_table"
    second_order = (reference[key] - first[key]).abs().max()
    assert second_order > 1e-5, "the tasks must make the second-order term visible"
    torch.testing.assert_close(fused[key] - theta[key], reference[key] - theta[key], rtol=1e-3, atol=second_order * 1e-2)
    for k in theta:
        torch.testing.assert_close(fused[k], reference[k], rtol=1e-4, atol=1e-5)

"""The CPU fast paths of BlockField give exactly what nerfstudio's modules give."""

import torch
from torch import nn

from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SceneContraction

from mclnf_city.fields import contract, run_mlp


def test_contraction_matches_nerfstudio_linf_contraction():
    x = torch.cat([torch.rand(1000, 3) * 2 - 1, torch.randn(1000, 3) * 10, torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])])
    assert torch.equal(contract(x), SceneContraction(order=float("inf"))(x))
    assert contract(x).abs().max() <= 2.0


def test_run_mlp_matches_nerfstudio_forward_and_backward():
    torch.manual_seed(0)
    for out_activation in (nn.ReLU(), None, nn.Sigmoid()):
        mlp = MLP(in_dim=7, num_layers=3, layer_width=16, out_dim=5, activation=nn.ReLU(), out_activation=out_activation,
                  implementation="torch")
        x = torch.randn(300, 7)
        ours, theirs = run_mlp(mlp, x), mlp(x)
        assert torch.equal(ours, theirs)
        g = torch.randn_like(ours)
        grads_ours = torch.autograd.grad(ours, list(mlp.parameters()), g)
        grads_theirs = torch.autograd.grad(mlp(x), list(mlp.parameters()), g)
        for a, b in zip(grads_ours, grads_theirs):
            assert torch.equal(a, b)


def test_cpu_allocator_setting_is_applied_once_and_can_be_turned_off():
    import os
    import subprocess
    import sys

    code = "from mclnf_city import cpu_allocator as c; a = c.keep_freed_memory(); print(a == c.keep_freed_memory() == c.status(), a)"
    for env, expected in (({}, "glibc heap kept"), ({"MCLNF_MALLOC": "default"}, "glibc default (MCLNF_MALLOC=default)")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
        assert out.stdout.startswith("True " + expected), out.stdout

"""Shared fixtures: tiny synthetic captures made by mclnf_city.scenes.make_city, and a trained tiny city."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mclnf_city.scenes.make_city import generate_city

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "bench"))  # the benchmark scripts' modules, for their tests
os.environ.setdefault("OMP_NUM_THREADS", "2")


BIN = Path(sys.executable).parent
FAST = [
    "--vis", "tensorboard",
    "--machine.device-type", "cpu",
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.model.num-coarse-samples", "12",
    "--pipeline.model.num-fine-samples", "12",
    "--experiment-name", "cli",
]
"""ns-train options that keep end-to-end tests short."""


def run(args, timeout=600, threads=2, **kw):
    """Run one of the installed ns-* / mclnf-* commands (`threads` per process); fail the test
    with its output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


TINY_CITY = dict(blocks_x=2, blocks_y=2, image_width=40, image_height=30)


@pytest.fixture(scope="session")
def tiny_capture(tmp_path_factory) -> Path:
    """A 2x2-block synthetic city, small images: the capture most tests train on."""
    out = tmp_path_factory.mktemp("captures") / "tiny_city"
    return generate_city(out, seed=3, progress=False, verbose=False, **TINY_CITY)


def tiny_trainer_config(data: Path, output_dir: Path, steps_per_block: int = 30, **pipeline):
    """The mclnf-city-tiny preset pointed at a capture, shortened for tests."""
    from mclnf_city.trainer import preset_config

    config = preset_config("mclnf-city-tiny", data, output_dir, steps_per_block, rays=256, **pipeline)
    config.pipeline.model.num_coarse_samples = 16
    config.pipeline.model.num_fine_samples = 16
    config.steps_per_save = 10_000
    return config


@pytest.fixture(scope="session", autouse=True)
def torch_home_without_weights(tmp_path_factory):
    """Tests never depend on what happens to lie in the user's torch hub cache (AlexNet's
    weights turn LPIPS on): every test, and every command it runs, sees an empty one."""
    home = tmp_path_factory.mktemp("torch_home_empty")
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = before


@pytest.fixture
def lpips_weights(tmp_path_factory, monkeypatch):
    """A torch hub cache holding AlexNet weights (random, seeded: no download) where LPIPS looks
    for them; TORCH_HOME points at it for this test and the commands it runs."""
    import torch
    import torchvision

    from mclnf_city import metrics

    home = tmp_path_factory.mktemp("torch_home_alexnet")
    monkeypatch.setenv("TORCH_HOME", str(home))
    path = metrics.lpips_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    monkeypatch.setattr(metrics, "_LPIPS", None)
    monkeypatch.setattr(metrics, "_LPIPS_CHECKED", False)
    return home


@pytest.fixture(autouse=True)
def grad_mode_left_on():
    """A test (or the code it calls) must not leave autograd off for the tests after it."""
    import torch

    yield
    assert torch.is_grad_enabled(), "autograd was left disabled (torch.set_grad_enabled(False) outside a scope)"

"""θ_shared files: the bundled prior matches its record and loads strictly; --pipeline.prior choices."""

from __future__ import annotations

import json

import pytest
import torch

from mclnf_city.fields import BlockField, BlockFieldSpec
from mclnf_city.prior import PRIOR_DIR, bundled_prior_path, initial_prior
from mclnf_city.store import load_checked, sha256
from method_configs.mclnf_city_presets import mclnf_city_tiny


def test_bundled_prior_of_the_tiny_preset_matches_its_record():
    spec = mclnf_city_tiny.config.pipeline.model.field
    path = bundled_prior_path(spec)
    assert path.exists(), f"{path} missing: run tools/train_prior.py"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == sha256(path.read_bytes())
    assert BlockFieldSpec(**record["architecture"]) == spec
    assert all(c["seed"] != 0 and c["seed"] < 900 for c in record["cities"]), "demo/benchmark cities must stay unseen"
    state = load_checked(path, record["sha256"], "bundled prior")
    field = BlockField(spec, num_images=5)
    field.load_prior(state, source=str(path))  # strict: every shared parameter, nothing else
    assert all(torch.equal(p, state[k]) for k, p in field.named_parameters() if k in state)
    assert (field.appearance.weight == 0).all()


def test_every_bundled_prior_loads_into_its_architecture():
    for path in sorted(PRIOR_DIR.glob("*.pt")):
        record = json.loads(path.with_suffix(".json").read_text())
        spec = BlockFieldSpec(**record["architecture"])
        assert bundled_prior_path(spec).name == path.name
        BlockField(spec, num_images=3).load_prior(load_checked(path, record["sha256"], str(path)), source=str(path))


def test_prior_choices(tmp_path, capsys):
    spec = BlockFieldSpec(num_levels=2, max_res=32, log2_hashmap_size=8, hidden_dim=8, hidden_dim_color=8,
                          appearance_embedding_dim=2, far_field_hidden_dim=8)
    state, source = initial_prior("bundled", spec, seed=4)  # no prior bundled for this one
    assert "seed 4" in source
    again, _ = initial_prior("random", spec, seed=4)
    assert set(state) == set(again) and all(torch.equal(state[k], again[k]) for k in state)
    assert not any(k.startswith("appearance") for k in state)
    path = tmp_path / "theta.pt"
    torch.save(state, path)
    loaded, source = initial_prior(str(path), spec, seed=0)
    assert source == f"prior file {path}" and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(FileNotFoundError, match="no_such_prior.pt"):
        initial_prior(str(tmp_path / "no_such_prior.pt"), spec, seed=0)


def test_a_wheel_install_carries_the_bundled_priors(tmp_path):
    """`pip install .` (not editable) must find the bundled priors: they are package data."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("mclnf_city", "method_configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("mclnf_city-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in PRIOR_DIR.glob("*.pt"):
        assert f"mclnf_city/priors/{path.name}" in names and f"mclnf_city/priors/{path.stem}.json" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=300)
    check = ("import sys; sys.path.insert(0, sys.argv[1]); from mclnf_city.prior import PRIOR_DIR; "
             "assert str(PRIOR_DIR).startswith(sys.argv[1]), PRIOR_DIR; print(sorted(p.name for p in PRIOR_DIR.glob('*.pt')))")
    out = subprocess.run([sys.executable, "-c", check, str(tmp_path / "site")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(p.name for p in PRIOR_DIR.glob("*.pt")))


def test_train_prior_writes_a_prior_that_loads_and_its_record(tmp_path):
    """tools/train_prior.py end to end at the smallest size: one city, one meta-step, with the
    Fisher-weighted inner loop; the written θ_shared loads strictly and moved from the init."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "priors"
    cmd = [sys.executable, str(ROOT / "tools" / "train_prior.py"), "--preset", "mclnf-city-tiny", "--cities", "1",
           "--meta-steps", "1", "--inner-steps", "2", "--rays", "64", "--fisher-weighting",
           "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec = mclnf_city_tiny.config.pipeline.model.field
    path = out / bundled_prior_path(spec).name
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["meta_learning"]["fisher_weighting"] is True and record["meta_learning"]["meta_steps"] == 1
    state = load_checked(path, record["sha256"], "trained prior")
    BlockField(spec, num_images=2).load_prior(state, source=str(path))
    init, _ = initial_prior("random", spec, seed=0)
    assert any(not torch.equal(state[k], init[k]) for k in init), "meta-training did not move θ_shared"

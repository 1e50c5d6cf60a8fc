"""Block-parallel training: two gloo processes train exactly the blocks one process trains."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import FAST, run
from mclnf_city.stream import wave_schedule
from mclnf_city.store import CityStore

STEPS = ["--pipeline.steps-per-block", "12"]


def test_wave_schedule_gives_every_block_once_and_keeps_ranks_in_step():
    stream = [0, 2, 1, 3, 5]
    assert wave_schedule(stream, 1, 0, 1) == stream
    assert wave_schedule(stream, 2, 0, 1) == stream  # one process, waves of two: same order
    r0, r1 = wave_schedule(stream, 2, 0, 2), wave_schedule(stream, 2, 1, 2)
    assert r0 == [0, 1, 5] and r1 == [2, 3, None]  # the last wave has one block: rank 1 waits
    assert sorted(b for b in r0 + r1 if b is not None) == sorted(stream)
    assert wave_schedule(stream, 4, 1, 2) == [2, 3, None, None]
    with pytest.raises(ValueError, match="multiple"):
        wave_schedule(stream, 3, 0, 2)


def _average_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from mclnf_city.distributed import average_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    theta = {"w": torch.full((3,), float(rank + 1)), "b": torch.tensor([10.0 * rank])}
    torch.save(average_across_ranks(theta), f"{out}.{rank}")
    dist.destroy_process_group()


def test_meta_update_is_averaged_across_processes(tmp_path):
    out = str(tmp_path / "theta")
    torch.multiprocessing.spawn(_average_worker, args=(str(tmp_path / "init"), out), nprocs=2)
    for rank in (0, 1):
        theta = torch.load(f"{out}.{rank}")
        assert torch.equal(theta["w"], torch.full((3,), 1.5)) and torch.equal(theta["b"], torch.tensor([5.0]))


def _train(capture: Path, out: Path, *extra: str):
    # one thread in every process, one or two of them: sums in the same order, blocks equal bit for bit
    run(["ns-train", "mclnf-city-tiny", "--data", str(capture), "--output-dir", str(out), "--timestamp", "run",
         *STEPS, *FAST, *extra], threads=1)
    return out / "cli" / "mclnf-city-tiny" / "run"


@pytest.fixture(scope="module")
def two_runs(tiny_capture, tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    two = _train(tiny_capture, out / "two", "--machine.num-devices", "2")
    one = _train(tiny_capture, out / "one", "--pipeline.blocks-per-wave", "2")
    return one, two


def test_two_processes_train_the_same_blocks_as_one(two_runs):
    one, two = two_runs
    store_one, store_two = CityStore(one / "city"), CityStore(two / "city")
    store_two.verify()  # every block file matches the checksum the manifest recorded
    done = store_one.done_blocks()
    assert sorted(store_two.done_blocks()) == sorted(done) and len(done) == 4
    assert {store_two.block(b)["rank"] for b in done} == {0, 1}  # both processes trained blocks
    assert {store_one.block(b)["rank"] for b in done} == {0}
    for b in done:
        a, c = store_one.load_block(b), store_two.load_block(b)
        assert a.keys() == c.keys() and all(torch.equal(c[k], a[k]) for k in a), f"block {b}"
    report = json.loads((two / "city" / "report" / "metrics.json").read_text())
    assert report["mean"]["psnr"] > 8.0
    assert all(v["renders_alone_bit_identical"] for v in report["blocks"].values() if v["renders_alone_bit_identical"] is not None)


def test_a_restart_after_a_process_died_retrains_only_its_block(two_runs, tiny_capture, tmp_path):
    _, two = two_runs
    store = CityStore(two / "city")
    last_wave = store.manifest["stream_order"][2:]
    lost = next(b for b in last_wave if store.block(b)["rank"] == 1)
    before = {b: store.block(b)["sha256"] for b in store.done_blocks()}
    reference = store.load_block(lost)
    # Rank 1 died while training `lost`: its file never made it, the manifest says active.
    (store.root / store.block(lost)["file"]).unlink()
    store.set_status(lost, "active", file=None, sha256=None)
    run(["ns-train", "mclnf-city-tiny", "--data", str(tiny_capture), "--output-dir", str(tmp_path), "--timestamp", "resumed",
         *STEPS, *FAST, "--machine.num-devices", "2", "--load-dir", str(two / "nerfstudio_models")], threads=1)
    store.refresh()
    assert sorted(store.done_blocks()) == sorted(before)
    for b, sha in before.items():
        if b != lost:
            assert store.block(b)["sha256"] == sha  # untouched
    retrained = store.load_block(lost)
    for k in reference:  # the same rays, random streams and threads: the same block again, bit for bit
        assert torch.equal(retrained[k], reference[k]), k


def test_distributed_meta_learning_records_one_prior(tiny_capture, tmp_path):
    run_dir = _train(tiny_capture, tmp_path, "--machine.num-devices", "2", "--pipeline.meta.meta-steps", "2",
                     "--pipeline.meta.inner-steps", "2")
    prior = CityStore(run_dir / "city").manifest["prior"]
    assert prior["meta"]["processes"] == 2 and "2 processes" in prior["source"]
    assert all(torch.isfinite(v).all() for v in CityStore(run_dir / "city").load_prior().values())

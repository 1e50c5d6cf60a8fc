"""Streaming blocks: zero forgetting, bounded memory, strict checkpoints (in-process training)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_trainer_config
from mclnf_city.prior import initial_prior
from mclnf_city.store import DONE, CityStore, StoreError
from mclnf_city.trainer import setup_trainer


@pytest.fixture(scope="module")
def trained(tiny_capture, tmp_path_factory):
    """Train the tiny city in-process, recording every finished block's renders at finish time."""
    config = tiny_trainer_config(tiny_capture, tmp_path_factory.mktemp("runs"), steps_per_block=25)
    config.pipeline.model.max_loaded_blocks = 2  # smaller than the city: forces re-reads from disk
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    views = pipeline.report.test_views_by_block()
    at_finish = {}
    original_finish = pipeline.finish_block

    def finish_and_record(b, step):
        original_finish(b, step)
        # renders right after block b finished: alone, and through the city as it stands
        at_finish[b] = {
            "alone": pipeline.report.render_block_alone(b, views.get(b, [0])),
            "city": [pipeline.report.render_test_view(i)[0] for i in views.get(b, [0])],
            "loaded": list(pipeline.model.frozen.loaded()),
        }

    pipeline.finish_block = finish_and_record
    trainer.train()
    return trainer, pipeline, views, at_finish


def test_every_block_is_done_and_stored(trained):
    trainer, pipeline, _, at_finish = trained
    store = CityStore(pipeline.store.root)
    assert set(at_finish) == set(pipeline.stream)
    assert all(store.status(b) == DONE for b in pipeline.stream)
    assert trainer.config.max_num_iterations == len(pipeline.stream) * pipeline.config.steps_per_block


def test_zero_forgetting_bit_identical(trained):
    """Earlier blocks render bit-identically after later blocks trained (alone, from disk)."""
    _, pipeline, views, at_finish = trained
    pipeline.model.frozen._blocks.clear()  # read every block back from the store
    for b in pipeline.stream:
        now = pipeline.report.render_block_alone(b, views.get(b, [0]))
        assert torch.equal(now, at_finish[b]["alone"]), f"block {b} changed after later blocks trained"
        assert now.abs().sum() > 0


def test_city_renders_of_the_last_block_unchanged(trained):
    """With every block finished, city renders are a pure function of the frozen store."""
    _, pipeline, views, at_finish = trained
    last = pipeline.stream[-1]
    pipeline.model.frozen._blocks.clear()
    for i, before in zip(views.get(last, [0]), at_finish[last]["city"]):
        assert torch.equal(pipeline.report.render_test_view(i)[0], before)


def test_memory_bounded_by_cache(trained):
    _, pipeline, _, at_finish = trained
    assert all(len(r["loaded"]) <= 2 for r in at_finish.values())
    # only the active slot is in the checkpointed state, whatever the city's size
    other = [k for k in pipeline.state_dict() if not (k.startswith("_model.active.") or k in ("_model.active_block", "_model.device_indicator_param"))]
    assert not other, other[:5]


def test_report_written(trained):
    import json

    _, pipeline, _, _ = trained
    report = json.loads((pipeline.store.root / "report" / "metrics.json").read_text())
    assert report["test_views"] == len(pipeline.datamanager.eval_dataset)
    assert all(entry["renders_alone_bit_identical"] in (True, None) for entry in report["blocks"].values())
    assert any(entry["renders_alone_bit_identical"] for entry in report["blocks"].values())
    assert len(list((pipeline.store.root / "report" / "renders").glob("*.png"))) == report["test_views"]


def test_checkpoint_load_is_strict(trained):
    _, pipeline, _, _ = trained
    state = pipeline.state_dict()
    missing = {k: v for k, v in state.items() if "color_head" not in k}
    with pytest.raises(StoreError, match="missing"):
        pipeline.load_state_dict(missing)
    extra = dict(state)
    extra["_model.blocks.7.encoding.hash_table"] = torch.zeros(3)
    with pytest.raises(StoreError, match="unexpected"):
        pipeline.load_state_dict(extra)
    wrong = dict(state)
    wrong["_model.active_block"] = torch.tensor(99)
    with pytest.raises(StoreError, match="active block 99"):
        pipeline.load_state_dict(wrong)
    pipeline.load_state_dict(state)  # the real thing loads


def test_block_rays_come_from_the_active_block(trained):
    _, pipeline, _, _ = trained
    dm = pipeline.datamanager
    b = pipeline.stream[0]
    dm.active_block = b
    _, batch = dm.next_train(step=123)
    # Every drawn pixel's ray crosses the active block's expanded box.
    cam, y, x = batch["indices"].T
    rays = dm.train_ray_generator(batch["indices"])
    assert pipeline.partition.crossing_mask(rays.origins.double(), rays.directions.double(), blocks=[b]).all()
    pool = dm.pool(b)
    owner = pool.images[torch.searchsorted(pool.starts, batch["pool_positions"], right=True) - 1]
    assert torch.equal(owner, cam) and torch.equal(pool.pixels[batch["pool_positions"]].long(), y * dm.widths[cam] + x)
    _, again = dm.next_train(step=123)
    assert torch.equal(batch["indices"], again["indices"]), "the sample at a step must be reproducible (resume)"


def test_meta_training_writes_the_prior_every_block_starts_from(tiny_capture, tmp_path):
    """--pipeline.meta.meta-steps: θ_shared is meta-trained on the blocks, stored, and used."""

    config = tiny_trainer_config(tiny_capture, tmp_path, steps_per_block=2, prior="random")
    config.pipeline.meta.meta_steps = 2
    config.pipeline.meta.inner_steps = 2
    trainer = setup_trainer(config)
    pipeline = trainer.pipeline
    store = CityStore(pipeline.store.root)
    entry = store.manifest["prior"]
    assert entry["meta"]["meta_trained"]["meta_steps"] == 2 and "meta-trained" in entry["source"]
    prior = store.load_prior()
    default, _ = initial_prior("random", config.pipeline.model.field, config.pipeline.prior_seed)
    assert any(not torch.equal(prior[k], default[k]) for k in prior), "meta-training did not move θ_shared"
    _assert_active_starts_from(pipeline, prior)


def _assert_active_starts_from(pipeline, prior):
    """The next training step starts its block from `prior`, with a neutral appearance embedding."""
    step = pipeline.stream.index(next(b for b in pipeline.stream if pipeline.store.status(b) != DONE))
    pipeline.get_train_loss_dict(step * pipeline.config.steps_per_block)
    for k, v in pipeline.model.active.named_parameters():
        expected = prior[k] if k in prior else torch.zeros_like(v)
        assert torch.equal(v.detach(), expected), k


def test_meta_continual_moves_theta_towards_each_finished_block(tiny_capture, tmp_path):
    """--pipeline.meta.continual: θ ← θ + ε (φ_b − θ) after each block; the next block starts there."""
    config = tiny_trainer_config(tiny_capture, tmp_path, steps_per_block=3, prior="random")
    config.pipeline.meta.continual = True
    config.pipeline.meta.continual_epsilon = 0.25
    trainer = setup_trainer(config)
    pipeline = trainer.pipeline
    theta0 = {k: v.clone() for k, v in pipeline.model.prior.items()}
    first = pipeline.stream[0]
    finish = pipeline.finish_block
    seen = {}

    def record(b, step):
        finish(b, step)
        seen.setdefault(b, CityStore(pipeline.store.root).load_prior())
        raise KeyboardInterrupt  # stop after the first block

    pipeline.finish_block = record
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    phi = pipeline.store.load_block(first)
    for k, v in theta0.items():
        assert torch.allclose(seen[first][k], v + 0.25 * (phi[k] - v), atol=1e-6), k
    meta = CityStore(pipeline.store.root).manifest["prior"]["meta"]
    assert meta["continual_absorbed"] == [first]
    _assert_active_starts_from(pipeline, seen[first])


def test_a_finished_block_answers_with_the_stored_weights(trained):
    """A block the store holds, 'finished' again (a wave restarted with it inside): what answers
    for it is the stored block, not the active slot (θ_shared here)."""
    _, pipeline, views, at_finish = trained
    b = pipeline.stream[0]
    trainer, pipeline._trainer = pipeline._trainer, None  # no checkpoint from this test
    try:
        pipeline._start_block(b)
        pipeline.finish_block(b, step=0)
    finally:
        pipeline._trainer = trainer
    cached = pipeline.model.frozen.get(b, "cpu").state_dict()
    for k, v in pipeline.store.load_block(b).items():
        assert torch.equal(cached[k], v), f"block {b}: {k} is not what the store holds"
    assert torch.equal(pipeline.report.render_block_alone(b, views.get(b, [0])), at_finish[b]["alone"])

def test_a_resume_after_a_kill_between_store_and_checkpoint_uses_the_stored_block(tiny_capture, tmp_path):
    """Killed after block B was stored but before its checkpoint: the resumed run skips B's steps,
    and B answers (for later blocks and the report) with the weights the store holds."""
    spb = 4
    config = tiny_trainer_config(tiny_capture, tmp_path, steps_per_block=spb)
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    save, saved = trainer.save_checkpoint, []

    def save_or_die(step):
        if saved:
            raise KeyboardInterrupt("killed before the checkpoint")
        save(step)
        saved.append(step)

    trainer.save_checkpoint = save_or_die
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    store = trainer.pipeline.store
    first, second = trainer.pipeline.stream[:2]
    assert saved == [spb - 1] and store.status(first) == DONE and store.status(second) == DONE
    stored = store.load_block(second)
    sha = store.block(second)["sha256"]

    resumed = tiny_trainer_config(tiny_capture, tmp_path, steps_per_block=spb)
    resumed.timestamp = config.timestamp + "_resumed"
    resumed.load_dir = trainer.checkpoint_dir
    resumed.save_config()
    again = resumed.setup(local_rank=0, world_size=1)
    again.setup()
    pipeline = again.pipeline
    assert pipeline.store.root == store.root
    assert again._start_step == 2 * spb, "the resumed run must not spend steps on a block the store holds"
    steps = []
    trains = pipeline.get_train_loss_dict
    pipeline.get_train_loss_dict = lambda step: (steps.append(step), trains(step))[1]
    again.train()
    assert min(steps) == 2 * spb
    pipeline.store.refresh()
    assert pipeline.store.block(second)["sha256"] == sha
    cached = pipeline.model.frozen.get(second, "cpu").state_dict()
    for k, v in stored.items():
        assert torch.equal(cached[k], v), f"block {second}: {k} is not what the store holds"
    import json

    report = json.loads((pipeline.store.root / "report" / "metrics.json").read_text())
    assert all(entry["renders_alone_bit_identical"] in (True, None) for entry in report["blocks"].values())


def test_capped_evaluation_renders_the_same_view_smaller(trained):
    """--pipeline.block-eval-max-pixels: the view is rendered at most that large, with its aspect,
    and matches the full-resolution render and photo averaged down to that size."""
    _, pipeline, _, _ = trained
    full, photo = pipeline.report.render_test_view(0)
    height, width = photo.shape[:2]
    small, small_photo = pipeline.report.render_test_view(0, max_pixels=height * width // 4)
    h, w = small.shape[:2]
    assert small_photo.shape == small.shape and h * w <= height * width // 4
    assert abs(w / h - width / height) < 0.1
    area = lambda x: torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0)  # noqa: E731
    assert torch.allclose(small_photo, area(photo.float()))
    psnr = lambda a, b: float(-10 * torch.log10(torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2)))  # noqa: E731
    same, mirrored = psnr(small, area(full)), psnr(small, area(full.flip(1)))
    print(f"downscaled render vs full render averaged down: {same:.1f} dB (mirrored: {mirrored:.1f} dB)")
    assert same > 25 and same > mirrored + 5, "the downscaled render is not the same view"
    assert torch.equal(pipeline.report.render_test_view(0, max_pixels=height * width)[0], full)  # no cap needed: untouched


def test_distortion_loss_is_added_only_when_asked_and_only_in_training(trained):
    _, pipeline, _, _ = trained
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    saved, was_training = model.config.distortion_loss_mult, model.training
    try:
        model.train()
        assert "distortion_loss" not in model.get_loss_dict(model(ray_bundle), batch)
        model.config.distortion_loss_mult = 0.01
        losses = model.get_loss_dict(model(ray_bundle), batch)
        assert torch.isfinite(losses["distortion_loss"]) and float(losses["distortion_loss"]) > 0
        model.eval()
        assert "distortion" not in model(ray_bundle)
    finally:
        model.config.distortion_loss_mult = saved
        model.train(was_training)

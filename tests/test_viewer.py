"""The city in the viewer, without a browser: colours, box geometry, hiding blocks, the GUI state."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

from conftest import tiny_trainer_config
from mclnf_city.store import ACTIVE, DONE, EMPTY, WAITING
from mclnf_city.trainer import setup_trainer
from mclnf_city.viewer import BOX_PATH, CityViewer, box_corners_viewer, box_outline, progress_markdown, status_colour
from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO


@pytest.fixture(scope="module")
def pipeline(tiny_capture, tmp_path_factory):
    """A tiny city trained in-process, a few steps per block (the viewer needs finished blocks)."""
    config = tiny_trainer_config(tiny_capture, tmp_path_factory.mktemp("viewer_runs"), steps_per_block=4)
    trainer = setup_trainer(config)
    trainer.train()
    pipeline = trainer.pipeline
    pipeline.eval()
    return pipeline


def test_status_colours():
    green, orange, grey, dim = (status_colour(s) for s in (DONE, ACTIVE, WAITING, EMPTY))
    assert green[1] > max(green[0], green[2]) + 100  # green
    assert orange[0] > orange[1] > orange[2] and orange[0] - orange[2] > 150  # orange
    assert grey[0] == grey[1] == grey[2] and dim[0] == dim[1] == dim[2] and sum(dim) < sum(grey)
    assert status_colour("unknown") == grey


def test_box_corners_match_the_partition(pipeline):
    partition = pipeline.partition
    corners = torch.from_numpy(box_corners_viewer(partition))
    assert corners.shape == (partition.num_blocks, 8, 3)
    # back to the dataparser frame (what the viewer divides by), then to the city frame
    city = partition.to_city(corners / VISER_NERFSTUDIO_SCALE_RATIO)
    regions = partition.regions()
    for b in range(partition.num_blocks):
        assert torch.allclose(city[b].min(0).values, regions[b, 0], atol=1e-9)
        assert torch.allclose(city[b].max(0).values, regions[b, 1], atol=1e-9)
        centre = corners[b].mean(0) / VISER_NERFSTUDIO_SCALE_RATIO
        assert int(partition.locate(centre[None])[0]) == b


def test_box_outline_draws_the_12_edges_straight():
    corners = np.array([[x, y, z] for z in (0, 2) for y in (0, 3) for x in (0, 5)], dtype=float)
    points, controls = box_outline(corners)
    edges = {frozenset(e) for e in zip(BOX_PATH[:-1], BOX_PATH[1:])}
    cube_edges = {frozenset((i, i ^ (1 << k))) for i in range(8) for k in range(3)}
    assert edges == cube_edges
    assert len(controls) == 2 * len(points) - 2
    for s in range(len(points) - 1):  # control points on the segment: straight lines
        a, b = points[s], points[s + 1]
        for c in controls[2 * s : 2 * s + 2]:
            assert np.allclose(np.cross(c - a, b - a), 0) and 0 < np.dot(c - a, b - a) < np.dot(b - a, b - a)


def _render(pipeline, i=0):
    camera = pipeline.datamanager.eval_dataset.cameras[i : i + 1]
    with torch.no_grad():
        return pipeline.model.get_outputs_for_camera(camera)


def _points_in(pipeline, b, n=256):
    """Random world points inside block b's region."""
    partition = pipeline.partition
    lo, hi = partition.regions()[b]
    city = lo + (hi - lo) * torch.rand(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
    return (city @ partition.rotation + partition.origin).float()


def test_hidden_block_renders_like_empty_space_and_training_is_unaffected(pipeline):
    model = pipeline.model
    b, other = pipeline.stream[0], pipeline.stream[1]
    shown = _render(pipeline)
    density_b = model.density_at(_points_in(pipeline, b))
    density_other = model.density_at(_points_in(pipeline, other))
    assert density_b.abs().sum() > 0
    try:
        model.hidden_blocks = frozenset({b})
        # hidden: no density in its region; the other blocks answer as before
        assert torch.equal(model.density_at(_points_in(pipeline, b)), torch.zeros_like(density_b))
        assert torch.equal(model.density_at(_points_in(pipeline, other)), density_other)
        assert not torch.equal(_render(pipeline)["rgb"], shown["rgb"])
        # every block hidden: the whole city is empty space (no density, no far field)
        model.hidden_blocks = frozenset(pipeline.stream)
        nothing = _render(pipeline)
        assert nothing["accumulation"].abs().max() == 0 and nothing["rgb"].abs().max() == 0
        # evaluation and training see every block, whatever the viewer hides
        assert torch.equal(pipeline.report.render_test_view(0)[0], shown["rgb"])
        with model.for_evaluation():
            evaluated = _render(pipeline)
            assert torch.equal(evaluated["rgb"], shown["rgb"])
            assert "normals" not in evaluated  # metrics never use them: not computed
        assert "normals" in shown  # the viewer and ns-export pointcloud get them
        model.train()
        try:
            assert torch.equal(model.density_at(_points_in(pipeline, b)), density_b)
        finally:
            model.eval()
    finally:
        model.hidden_blocks = frozenset()
    assert torch.equal(_render(pipeline)["rgb"], shown["rgb"])  # shown again: as before


def test_progress_markdown(pipeline):
    text = progress_markdown(pipeline, None)
    n = len(pipeline.stream)
    assert f"**{n} / {n} blocks done**" in text
    for b in pipeline.stream:
        psnr = pipeline.store.block(b)["metrics"]["at_finish"]["psnr"]
        assert f"| {b} | done | {psnr:.2f} dB |" in text
    # while a block trains: its step within the block
    b = pipeline.stream[1]
    try:
        pipeline.store.block(b)["status"] = ACTIVE
        text = progress_markdown(pipeline, pipeline.config.steps_per_block + 2)
        assert f"**{n - 1} / {n} blocks done**" in text
        assert f"training block {b} (2 of {n}): step 3 / {pipeline.config.steps_per_block}" in text
        text = progress_markdown(pipeline, pipeline.config.steps_per_block - 1)  # the last step of the block before
        assert f"training block {b} (2 of {n}): step 0 / {pipeline.config.steps_per_block}" in text
    finally:
        pipeline.store.block(b)["status"] = DONE


def test_without_a_viewer_nothing_happens(pipeline):
    city_viewer = CityViewer(pipeline)
    city_viewer.refresh()
    city_viewer.on_step(3)
    assert city_viewer.viser_server is None and not city_viewer._boxes


class _FakeViewer:
    """What CityViewer uses of nerfstudio's Viewer: its viser server and re-render trigger."""

    def __init__(self, server):
        self.viser_server = server
        self.rerenders = 0

    def _trigger_rerender(self):
        self.rerenders += 1


def _wait_for(condition, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_gui_hides_and_shows_blocks(pipeline):
    import viser

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    try:
        viewer = _FakeViewer(server)
        city_viewer = CityViewer(pipeline)
        city_viewer._setup(viewer)
        assert set(city_viewer._checkboxes) == set(pipeline.stream)
        assert set(city_viewer._boxes) == set(range(pipeline.partition.num_blocks))
        assert all(city_viewer._drawn[b] == pipeline.store.status(b) for b in city_viewer._boxes)
        b = pipeline.stream[0]
        city_viewer._checkboxes[b].value = False  # as a click would; the callback runs on viser's threads
        assert _wait_for(lambda: viewer.rerenders >= 1)  # the callback's last act
        assert pipeline.model.hidden_blocks == frozenset({b})
        assert not city_viewer._boxes[b].visible and city_viewer._boxes[pipeline.stream[1]].visible
        city_viewer._show_all()
        assert not pipeline.model.hidden_blocks and all(h.visible for h in city_viewer._boxes.values())
        time.sleep(0.2)  # the checkboxes' callbacks, still to come, change nothing
        assert not pipeline.model.hidden_blocks
        # a status change redraws that box in its new colour
        try:
            pipeline.store.block(b)["status"] = ACTIVE
            city_viewer.refresh()
            assert city_viewer._drawn[b] == ACTIVE and "training block" not in city_viewer._panel.content
            city_viewer.on_step(1)
        finally:
            pipeline.store.block(b)["status"] = DONE
            city_viewer.refresh()
    finally:
        pipeline.model.hidden_blocks = frozenset()
        server.stop()

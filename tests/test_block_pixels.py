"""The pixel index and block pools: memory bounded by the block, not by the capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_trainer_config
from mclnf_city.block_pixels import PixelIndex, PixelIndexError, TrainImages, candidate_windows, mask_to_runs, runs_to_ids
from mclnf_city.fields import BlockField, BlockFieldSpec, compact_block_state


@pytest.fixture(scope="module")
def loads(tiny_capture, tmp_path_factory):
    """A set-up (not trained) tiny city, with every image read of the data manager recorded."""
    read = []
    original = TrainImages.load

    def recorded(self, i):
        read.append(i)
        return original(self, i)

    TrainImages.load = recorded
    try:
        config = tiny_trainer_config(tiny_capture, tmp_path_factory.mktemp("runs"), steps_per_block=2)
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        at_setup = list(read)
        yield trainer, read, at_setup
    finally:
        TrainImages.load = original


def every_ray(dm, partition, i):
    """[H * W, B] crossing of every pixel ray of image i with every block: the reference."""
    w, h = int(dm.widths[i]), int(dm.heights[i])
    local = torch.arange(w * h)
    rays = dm.train_ray_generator(torch.stack([torch.full_like(local, i), local // w, local % w], dim=-1))
    return partition.crossing_mask(rays.origins.double(), rays.directions.double())


def test_the_index_holds_exactly_the_pixels_whose_rays_cross_each_block(loads):
    trainer, _, _ = loads
    pipeline = trainer.pipeline
    dm, partition, index = pipeline.datamanager, pipeline.partition, pipeline.datamanager.pixel_index
    kinds = set()
    reference = {b: [] for b in range(partition.num_blocks)}
    for i in range(len(dm.widths)):
        mask = every_ray(dm, partition, i)
        for b in range(partition.num_blocks):
            if mask[:, b].any():
                reference[b].append((i, torch.nonzero(mask[:, b]).flatten()))
        windows = candidate_windows(partition, dm.train_dataset.cameras, i)
        kinds.update("whole" if win == (0, int(dm.widths[i]), 0, int(dm.heights[i])) else "window" for win in windows.values())
    assert kinds == {"whole", "window"}, "the capture must exercise both the window and the whole-image paths"
    for b in range(partition.num_blocks):
        pixels = index.read_pixels(b, dm.train_images)
        assert index.images(b).tolist() == [i for i, _ in reference[b]]
        expected = torch.cat([p for _, p in reference[b]]) if reference[b] else torch.zeros(0, dtype=torch.long)
        assert torch.equal(pixels.long(), expected), f"block {b}"


def test_a_distorted_or_inside_camera_is_tested_on_every_pixel(loads):
    trainer, _, _ = loads
    pipeline = trainer.pipeline
    cameras = pipeline.datamanager.train_dataset.cameras
    i = 0
    w, h = int(cameras.width[i]), int(cameras.height[i])
    distorted = cameras[:]  # a copy with lens distortion on camera 0
    distorted.distortion_params = torch.zeros(len(cameras), 6)
    distorted.distortion_params[i, 0] = 0.1
    windows = candidate_windows(pipeline.partition, distorted, i)
    assert windows and all(win == (0, w, 0, h) for win in windows.values())


def test_windows_hold_every_crossing_pixel_of_cameras_beside_behind_and_inside_boxes():
    """Random pinhole cameras around a 3x2 grid of boxes, many close enough that boxes reach
    behind them: every pixel whose ray crosses a box lies in that box's window, and boxes the
    camera is outside of get a window smaller than the image."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.model_components.ray_generators import RayGenerator

    from mclnf_city.partition import BlockPartition

    f64 = torch.float64
    partition = BlockPartition(rotation=torch.eye(3, dtype=f64), origin=torch.zeros(3, dtype=f64),
                               x_edges=torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=f64), y_edges=torch.tensor([-1.0, 0.0, 1.0], dtype=f64),
                               z_range=(0.0, 0.5), overlap=0.1, stream_order=list(range(6)))
    g = torch.Generator().manual_seed(0)
    n, w, h = 60, 48, 36
    centres = torch.cat([torch.rand(n, 2, generator=g) * 4 - 2, torch.rand(n, 1, generator=g) * 1.2 - 0.2], dim=1)
    look = torch.randn(n, 3, generator=g)
    look[:, 2] = -look[:, 2].abs() * 0.5
    forward = look / look.norm(dim=1, keepdim=True)
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))
    right = right / right.norm(dim=1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    c2w = torch.stack([right, up, -forward, centres], dim=2)
    cameras = Cameras(camera_to_worlds=c2w, fx=30.0, fy=30.0, cx=w / 2, cy=h / 2, width=w, height=h)
    generator, local = RayGenerator(cameras), torch.arange(w * h)
    kinds = set()
    for i in range(n):
        rays = generator(torch.stack([torch.full_like(local, i), local // w, local % w], dim=-1))
        crossing = partition.crossing_mask(rays.origins.double(), rays.directions.double())
        windows = candidate_windows(partition, cameras, i)
        boxes = partition.expanded_boxes()
        for b in range(partition.num_blocks):
            hit = torch.nonzero(crossing[:, b]).flatten()
            if not len(hit):
                continue
            assert b in windows, f"camera {i}, block {b}: crossed but given no window"
            x0, x1, y0, y1 = windows[b]
            ys, xs = hit // w, hit % w
            assert bool(((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).all()), f"camera {i}, block {b}"
            camera_inside = bool(((centres[i].double() >= boxes[b, 0]) & (centres[i].double() <= boxes[b, 1])).all())
            corners = torch.stack(torch.meshgrid(*boxes[b].T, indexing="ij"), dim=-1).reshape(-1, 3)
            reaches_behind = bool((((corners - c2w[i, :, 3].double()) @ forward[i].double()) < 0).any())
            if camera_inside:
                kinds.add("inside")
            elif windows[b] != (0, w, 0, h):
                kinds.add("cut" if reaches_behind else "in front")
    assert {"inside", "cut", "in front"} <= kinds, kinds


def test_set_up_reads_no_image_and_a_block_reads_only_its_own(loads):
    trainer, read, at_setup = loads
    pipeline = trainer.pipeline
    dm = pipeline.datamanager
    assert at_setup == [], "set-up must not read the training images"
    if len(dm.eval_dataset) > 1:
        assert not dm.eval_image_dataloader.cache_all_images, "test views are read when evaluated, not cached at set-up"
    b = pipeline.stream[0]
    read.clear()
    pipeline.stream.activate(b)
    dm.next_train(0)
    assert sorted(set(read)) == dm.pixel_index.images(b).tolist()
    read.clear()
    dm.next_train(1)
    assert read == [], "the active block's pixels are kept while it trains"


def test_the_index_is_reused_rebuilt_when_stale_and_refused_when_damaged(loads, capsys):
    trainer, _, _ = loads
    pipeline = trainer.pipeline
    dm, partition, root = pipeline.datamanager, pipeline.partition, pipeline.store.pixels_dir
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    dm.index_pixels(partition, root)  # same capture and partition: reused as it is
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    with pytest.raises(RuntimeError, match="no pixel index"):
        dm.index_pixels(partition.__class__.from_dict({**partition.to_dict(), "overlap": partition.overlap * 2}), root, build=False)

    b = pipeline.stream[0]
    path = root / f"block_{b:03d}.runs"
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-4])
        with pytest.raises(PixelIndexError, match=str(path)):
            PixelIndex.open(root).read_pixels(b, dm.train_images)
        bad = np.frombuffer(good, dtype="<i4").copy()
        bad[0] = 10**8
        path.write_bytes(bad.tobytes())
        with pytest.raises(PixelIndexError, match="outside their images"):
            PixelIndex.open(root).read_pixels(b, dm.train_images)
        bad = np.frombuffer(good, dtype="<i4").copy()
        k = 2 * int(np.argmax(bad[1::2] > 1)) + 1
        bad[k] -= 1  # one run a pixel shorter: the counts no longer add up
        path.write_bytes(bad.tobytes())
        with pytest.raises(PixelIndexError, match="do not add up"):
            PixelIndex.open(root).read_pixels(b, dm.train_images)
    finally:
        path.write_bytes(good)


def test_pixel_runs_round_trip():
    torch.manual_seed(0)
    for mask in (torch.rand(1000) < 0.5, torch.zeros(7, dtype=torch.bool), torch.ones(7, dtype=torch.bool),
                 torch.tensor([True, False, True, True, False, False, True])):
        first, length = mask_to_runs(mask)
        assert bool((length > 0).all())
        assert torch.equal(runs_to_ids(first, length), torch.nonzero(mask).flatten())


def test_a_block_file_holds_only_its_own_images_embeddings():
    spec = BlockFieldSpec(num_levels=2, max_res=32, log2_hashmap_size=8, hidden_dim=8, hidden_dim_color=8, appearance_embedding_dim=4)
    torch.manual_seed(0)
    active = BlockField(spec, 50)  # the active slot: a row for every training image of the capture
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[3, 7, 8, 41]] = True
    active.set_geometry(1, torch.eye(3), torch.zeros(3), torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), mask)
    with torch.no_grad():
        active.appearance.weight.normal_()
    stored = active.block_state()
    assert stored["image_ids"].tolist() == [3, 7, 8, 41] and stored["appearance.weight"].shape == (4, 4)
    assert torch.equal(stored["appearance.weight"], active.appearance.weight[mask])

    x, d = torch.rand(64, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    frozen = BlockField(spec, 4)
    frozen.load_block_state(stored, what="block 1")
    old_format = {k: v for k, v in active.state_dict().items() if k != "image_ids"}  # a file from before image_ids
    old = BlockField(spec, 4)
    old.load_block_state(old_format, what="block 1 (old file)")
    for module in (active, frozen, old):
        module.eval()
    with torch.no_grad():
        reference = active(x, d, None)[1]  # a novel view: the mean embedding of the block's images
        assert torch.equal(frozen(x, d, None)[1], reference)
        assert torch.equal(old(x, d, None)[1], reference)
    assert torch.equal(compact_block_state(stored)["image_ids"], stored["image_ids"])  # compact stays as it is

    # Training on a compact block: its own images use their rows, any other image the mean.
    frozen.train()
    cams = torch.tensor([7, 8, 9])
    rows = frozen._embedding(cams, 3, x[:3])
    assert torch.equal(rows[0], stored["appearance.weight"][1]) and torch.equal(rows[1], stored["appearance.weight"][2])
    assert torch.allclose(rows[2], stored["appearance.weight"].mean(0))


def test_without_a_stream_rays_come_from_the_photos_and_change_every_call(loads):
    """`ns-export pointcloud` asks for training rays with no block active (always at step 0)."""
    trainer, _, _ = loads
    dm = trainer.pipeline.datamanager
    before, dm.active_block = dm.active_block, None
    try:
        _, first = dm.next_train(0)
        _, second = dm.next_train(0)
    finally:
        dm.active_block = before
    assert not torch.equal(first["indices"], second["indices"])
    cam, y, x = first["indices"].T
    expected = torch.stack([dm.train_images.load(int(c))[int(yy) * int(dm.widths[c]) + int(xx)] for c, yy, xx in zip(cam, y, x)])
    assert torch.equal((first["image"] * 255).round().to(torch.uint8), expected)

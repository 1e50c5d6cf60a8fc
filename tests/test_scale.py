"""Rendering a city larger than the block cache: memory stays bounded by `max_loaded_blocks`,
a view reads from disk only the blocks its rays touch, and eviction never changes the image.

A 4 x 4 city of untrained blocks (each its own random init) written straight to a store, so
no capture and no training is needed; reads are counted with the scale benchmark's probe
(mclnf_city/cache_probe.py).
"""

from __future__ import annotations

import pytest
import torch

from mclnf_city.cache_probe import CacheProbe
from mclnf_city.fields import BlockField, BlockFieldSpec
from mclnf_city.model import CityModelConfig
from mclnf_city.partition import BlockPartition
from mclnf_city.prior import initial_prior
from mclnf_city.store import CityStore

SPEC = BlockFieldSpec(num_levels=4, max_res=64, log2_hashmap_size=10, hidden_dim=16, hidden_dim_color=16,
                      appearance_embedding_dim=2, far_field_hidden_dim=8)
GRID, CACHE, IMAGES = 4, 3, 3  # 16 blocks over [-1, 1]^2, 3 of them in memory at most


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> CityStore:
    f64 = torch.float64
    edges = torch.linspace(-1.0, 1.0, GRID + 1, dtype=f64)
    partition = BlockPartition(torch.eye(3, dtype=f64), torch.zeros(3, dtype=f64), edges, edges.clone(), (-0.2, 0.2), 0.05,
                               list(range(GRID * GRID)))
    store = CityStore(tmp_path_factory.mktemp("scale") / "city")
    store.create(partition, {}, {"num_train_images": IMAGES})
    boxes = partition.expanded_boxes().float()
    for b in range(GRID * GRID):
        torch.manual_seed(b)  # every block different: a block answering for another would show
        field = BlockField(SPEC, IMAGES)
        field.set_geometry(b, partition.rotation.float(), partition.origin.float(), boxes[b], torch.ones(IMAGES, dtype=torch.bool))
        store.write_block(b, field.state_dict(), steps=0, metrics={})
    return store


def city_model(store: CityStore, capacity: int):
    prior, _ = initial_prior("random", SPEC, 0)
    config = CityModelConfig(field=SPEC, implementation="torch", num_coarse_samples=8, num_fine_samples=8, max_loaded_blocks=capacity)
    from nerfstudio.data.scene_box import SceneBox

    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])), num_train_data=IMAGES,
                         metadata={}, device="cpu", partition=store.partition(), store=store, prior=prior, block_image_masks={})
    return model.eval()


@torch.no_grad()
def render(model, origins, directions):
    from nerfstudio.cameras.rays import RayBundle

    bundle = RayBundle(origins=origins, directions=torch.nn.functional.normalize(directions, dim=-1),
                       pixel_area=torch.ones(len(origins), 1), camera_indices=torch.zeros(len(origins), 1, dtype=torch.long))
    return model.get_outputs(bundle)["rgb"]


def down_rays(x0, x1, y0, y1, n=12):
    """n x n vertical rays from above the city over [x0, x1] x [y0, y1]."""
    x, y = torch.meshgrid(torch.linspace(x0, x1, n), torch.linspace(y0, y1, n), indexing="ij")
    origins = torch.stack([x.flatten(), y.flatten(), torch.full((n * n,), 1.0)], -1)
    return origins, torch.tensor([0.0, 0.0, -1.0]).expand(n * n, 3)


def test_cache_never_exceeds_its_size_and_eviction_changes_nothing(store):
    """A top-down view over all 16 blocks with room for 3: every block is read, at most 3 are held,
    and the image is bit-identical to the one rendered with every block in memory."""
    model = city_model(store, CACHE)
    probe = CacheProbe(model)
    rays = down_rays(-0.98, 0.98, -0.98, 0.98, n=24)
    small = render(model, *rays)
    assert set(probe.loads) == set(range(GRID * GRID))
    assert 0 < probe.max_cached <= CACHE, probe.max_cached
    assert len(model.frozen.loaded()) <= CACHE
    large = render(city_model(store, GRID * GRID), *rays)
    assert torch.equal(small, large), "evicting and re-reading blocks changed the render"


def test_a_view_reads_only_the_blocks_its_rays_touch(store):
    model = city_model(store, CACHE)
    probe = CacheProbe(model)
    # straight down over block 5 (ix 1, iy 1: x and y in [-0.5, 0)): block 5 alone, read once
    render(model, *down_rays(-0.45, -0.05, -0.45, -0.05))
    assert probe.loads == [5]
    probe.reset()
    render(model, *down_rays(-0.45, -0.05, -0.45, -0.05))
    assert probe.loads == [], "a warm cache must not read from disk again"
    # oblique rays in the row iy = 1, entering the city's top above block 1 (ix 0) and leaving
    # its bottom in block 5 (ix 1): those two blocks, nothing else of the 16; block 5 is still
    # in memory, so only block 1 is read
    probe.reset()
    y = torch.linspace(-0.45, -0.05, 8)
    origins = torch.stack([torch.full_like(y, -1.05), y, torch.full_like(y, 0.4)], -1)
    render(model, origins, torch.tensor([0.5, 0.0, -0.4]).expand(len(y), 3))
    assert probe.requested == {1, 5}, probe.requested
    assert probe.loads == [1], probe.loads

"""Ray/box intersection, pixel-to-block assignment and routing against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from mclnf_city.bounds import estimate_up
from mclnf_city.partition import (
    BlockPartition,
    PartitionError,
    estimate_partition,
    ray_box_intersect,
    rays_cross,
)


def brute_force_cross(origins, directions, box_min, box_max, t_max=50.0, n=20001):
    """Does the half-line hit the box? Dense points along the ray (test reference)."""
    t = torch.linspace(0.0, t_max, n, dtype=torch.float64)
    pts = origins[:, None, None] + directions[:, None, None] * t[None, None, :, None]  # [N, 1, T, 3]
    inside = ((pts >= box_min[None, :, None]) & (pts <= box_max[None, :, None])).all(-1)  # [N, B, T]
    return inside.any(-1)


def random_partition(seed=0, nx=3, ny=2, angle=0.4) -> BlockPartition:
    g = torch.Generator().manual_seed(seed)
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    x_edges = torch.cumsum(torch.rand(nx + 1, generator=g, dtype=torch.float64) + 0.5, 0) - 2
    y_edges = torch.cumsum(torch.rand(ny + 1, generator=g, dtype=torch.float64) + 0.5, 0) - 1.5
    return BlockPartition(rot, torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), x_edges, y_edges, (-0.5, 0.7), 0.2, list(range(nx * ny)))


def test_ray_box_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    origins = (torch.rand(300, 3, generator=g, dtype=torch.float64) - 0.5) * 8
    directions = torch.nn.functional.normalize(torch.randn(300, 3, generator=g, dtype=torch.float64), dim=-1)
    directions[:10, 2] = 0.0  # axis-parallel rays are a classic division-by-zero trap
    directions[:10] = torch.nn.functional.normalize(directions[:10], dim=-1)
    lo = (torch.rand(5, 3, generator=g, dtype=torch.float64) - 0.5) * 4
    hi = lo + torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 + 0.1
    # aim half of the rays near box centres so that hits and misses are both common
    target = ((lo + hi) / 2)[torch.arange(150) % 5] + torch.randn(150, 3, generator=g, dtype=torch.float64) * 0.5
    directions[150:] = torch.nn.functional.normalize(target - origins[150:], dim=-1)
    t_near, t_far = ray_box_intersect(origins, directions, lo, hi)
    fast = rays_cross(t_near, t_far)
    slow = brute_force_cross(origins, directions, lo, hi)
    # The dense reference misses grazing hits shorter than its step: allow only those.
    length = (t_far - t_near.clamp_min(0)).clamp_min(0)
    disagree = fast != slow
    assert fast.sum() > 100 and (~fast).sum() > 100, "test rays should both hit and miss"
    assert torch.all(length[disagree] < 1e-2), f"{int(disagree.sum())} real disagreements"
    # entry/exit points lie on the box surface
    hit_rows, hit_cols = torch.nonzero(fast, as_tuple=True)
    t_in = t_near[hit_rows, hit_cols].clamp_min(0)
    p = origins[hit_rows] + directions[hit_rows] * t_in[:, None]
    assert torch.all(p >= lo[hit_cols] - 1e-9) and torch.all(p <= hi[hit_cols] + 1e-9)


def test_locate_every_point_in_exactly_one_region():
    part = random_partition()
    g = torch.Generator().manual_seed(1)
    pts_city = torch.rand(20000, 3, generator=g, dtype=torch.float64)
    box = part.city_box()
    pts_city = box[0] - 0.3 + pts_city * (box[1] - box[0] + 0.6)
    world = pts_city @ part.rotation + part.origin  # inverse of to_city
    ids = part.locate(world)
    regions = part.regions()
    inside = ((pts_city[:, None] >= regions[None, :, 0]) & (pts_city[:, None] <= regions[None, :, 1])).all(-1)
    # points strictly inside a region: that region; points outside every region: -1
    counts = inside.sum(1)
    assert torch.all(ids[counts == 0] == -1)
    single = counts == 1
    assert torch.equal(ids[single], inside[single].int().argmax(1))
    # points on shared faces (counted twice) still get exactly one owner among them
    shared = counts > 1
    if shared.any():
        assert torch.all(inside[shared].gather(1, ids[shared][:, None]).squeeze(1))
    # a point exactly on an interior edge belongs to one block, on the far edge too
    edge = torch.tensor([[part.x_edges[1].item(), part.y_edges[0].item() + 0.01, 0.0]], dtype=torch.float64)
    assert part.locate(edge @ part.rotation + part.origin).item() == part.grid[1]  # block ix=1, iy=0


def test_pixel_assignment_matches_brute_force(tiny_capture):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    outputs = NerfstudioDataParserConfig(data=tiny_capture, load_3D_points=True).setup().get_dataparser_outputs("train")
    cams = outputs.cameras
    part = estimate_partition(cams.camera_to_worlds, outputs.metadata["points3D_xyz"], grid=(2, 2))
    rays = cams.generate_rays(camera_indices=0)  # all pixels of the first image
    origins = rays.origins.reshape(-1, 3).double()
    dirs = rays.directions.reshape(-1, 3).double()
    fast = part.crossing_mask(origins, dirs)
    # brute force in the city frame on a subset of pixels
    boxes = part.expanded_boxes()
    idx = torch.arange(0, len(origins), 7)
    slow = brute_force_cross(part.to_city(origins[idx]), part.dirs_to_city(dirs[idx]), boxes[:, 0], boxes[:, 1], t_max=6.0, n=6001)
    t_near, t_far = ray_box_intersect(part.to_city(origins[idx]), part.dirs_to_city(dirs[idx]), boxes[:, 0], boxes[:, 1])
    grazing = (t_far - t_near.clamp_min(0)).abs() < 2e-3
    assert torch.all((fast[idx] == slow) | grazing)
    assert fast.any()


def _cameras_looking_down(n=30, pitch_deg=50.0, seed=0):
    """Upright cameras on a circle, pitched down, z up (OpenGL convention)."""
    g = torch.Generator().manual_seed(seed)
    c2w = []
    for i in range(n):
        yaw = 2 * math.pi * i / n + 0.1 * torch.rand(1, generator=g).item()
        pitch = math.radians(pitch_deg)
        fwd = torch.tensor([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
        right = torch.nn.functional.normalize(torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0])), dim=0)
        up = torch.linalg.cross(right, fwd)
        pos = torch.tensor([3 * math.cos(yaw + math.pi), 3 * math.sin(yaw + math.pi), 3.0])
        c2w.append(torch.stack([right, up, -fwd, pos], dim=1))
    return torch.stack(c2w)


def test_estimate_up_ignores_pitch():
    c2w = _cameras_looking_down(pitch_deg=60.0)
    tilt = torch.tensor([[1.0, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    up, _ = estimate_up(torch.cat([tilt @ c2w[:, :, :3], (tilt @ c2w[:, :, 3:])], dim=2))
    assert torch.allclose(up.float(), tilt[:, 2], atol=1e-4)


def test_partition_of_cameras_without_points():
    part = estimate_partition(_cameras_looking_down(), None, grid=(3, 2))
    assert part.num_blocks == 6 and sorted(part.stream_order) == list(range(6))
    assert part.z_range[0] < part.z_range[1]


def test_bad_captures_are_named():
    c2w = _cameras_looking_down()
    with pytest.raises(PartitionError, match="at least 2"):
        estimate_partition(c2w[:1], None)
    far = c2w.clone()
    far[4, :3, 3] = torch.tensor([1e5, 0.0, 3.0])
    names = [f"images/frame_{i:05d}.png" for i in range(len(c2w))]
    with pytest.raises(PartitionError, match="frame_00004"):
        estimate_partition(far, None, image_names=names)
    with pytest.raises(PartitionError, match="positive"):
        estimate_partition(c2w, None, block_size=-1.0)


def test_partition_round_trip(tmp_path):
    part = random_partition()
    part.save(tmp_path / "p.json")
    again = BlockPartition.load(tmp_path / "p.json")
    assert again.to_dict() == part.to_dict()


def test_city_segment_matches_brute_force():
    part = random_partition()
    g = torch.Generator().manual_seed(2)
    box = part.city_box()
    origins_city = box[0] - 1 + torch.rand(400, 3, generator=g, dtype=torch.float64) * (box[1] - box[0] + 2)
    target = box[0] + torch.rand(400, 3, generator=g, dtype=torch.float64) * (box[1] - box[0])
    dirs_city = torch.nn.functional.normalize(target - origins_city + torch.randn(400, 3, generator=g, dtype=torch.float64), dim=-1)
    origins = origins_city @ part.rotation + part.origin
    dirs = dirs_city @ part.rotation
    near, far, hit = part.city_segment(origins, dirs)
    slow = brute_force_cross(origins_city, dirs_city, box[0:1], box[1:2], t_max=20.0)[:, 0]
    grazing = (far - near).abs() < 2e-3
    assert hit.sum() > 100 and (~hit).sum() > 10
    assert torch.all((hit == slow) | grazing)
    # the segment's ends lie in the box, and every sample between them is located in a block
    t = near[hit, None] + (far - near)[hit, None] * torch.linspace(0.001, 0.999, 50, dtype=torch.float64)
    pts = origins[hit, None] + dirs[hit, None] * t[..., None]
    assert torch.all(part.locate(pts) >= 0)

"""Scale in simulation: stream a 64-block generated city through the real training code and
measure what grows with the city and what must not; then render time against city size.

One command, one machine, one run (17 minutes on one core of the 2-core CPU machine):

    OMP_NUM_THREADS=1 python tools/bench/scale.py   # writes tools/bench/results/scale.json

1. City: `mclnf_city.scenes.make_city`, 8 x 8 city blocks, small images and a sparse flight
   (`--image-size`, `--drone-line-spacing`, ...). Reused when `<work>/city` already holds a
   city made with the same options.
2. Stream: the `mclnf-city-tiny` preset (`mclnf_city.trainer.preset_config`), `--pipeline.grid 8 8`,
   `--steps-per-block` steps per block, trained in this process. While it runs a thread samples
   VmRSS from /proc/self/status; after every block we record RSS, the block cache's size and the
   blocks read from disk. Afterwards: block file sizes, manifest size, the manifest's `seconds`
   per block, seconds per training step (`Trainer.train_iteration`), and the capture-sized
   tensors the data manager holds.
3. Render vs city size: fixed views (one block seen from 45 degrees, a street-level view, a
   top-down overview of the city) rendered with the cache cold and warm and
   `--max-loaded-blocks` blocks at most in memory, for cities of N finished blocks (a square
   of N blocks around the city centre; the rest of the trained city is left out, as if never
   built), N in `--render-sizes`. Counts blocks read from disk per view and times each read.
4. Seconds per step of the full `mclnf-city` preset on the same capture (`--full-steps`) and
   its block tensors: `memory.py`'s projection to a large city reads them from here.

Writes `--out` (JSON, every number) and prints the tables. Numbers are one run on a shared
CPU; the point is how they change with the number of blocks, not their absolute size.

    python tools/bench/scale.py --smoke --work /tmp/w --out /tmp/bench_scale.json   # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from mclnf_city.cache_probe import CacheProbe
from mclnf_city.trainer import preset_config, setup_trainer

from common import RESULTS, parse_args, write_json

MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------- memory
def proc_status_mb() -> Dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start) of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


class RssSampler(threading.Thread):
    """Samples VmRSS every `interval` seconds: the peak between two block ends is not missed."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.samples, self._stop_event = interval, [], threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((round(time.time() - self.t0, 2), round(proc_status_mb()["VmRSS"], 1)))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self) -> float:
        return max(r for _, r in self.samples)


# ---------------------------------------------------------------------- city
def city_options(args) -> Dict:
    w, h = args.image_size
    return dict(
        blocks_x=args.blocks[0], blocks_y=args.blocks[1], image_width=w, image_height=h, supersample=1,
        drone_line_spacing=args.drone_line_spacing, drone_step=args.drone_step,
        street_paths=args.street_paths, street_step=args.street_step,
    )


def make_city(args, out: Path) -> Tuple[Path, float, bool]:
    """Generate the city with mclnf_city.scenes.make_city, or reuse it when its options match."""
    opts = city_options(args)
    gt = out / "gt" / "city.json"
    if gt.exists():
        made = json.loads(gt.read_text())
        if made["seed"] == args.seed and all(made["options"][k] == v for k, v in opts.items()):
            return out, 0.0, True
    cmd = [sys.executable, "-m", "mclnf_city.scenes.make_city", "--out", str(out), "--seed", str(args.seed), "--overwrite", "--quiet"]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    start = time.time()
    subprocess.run(cmd, check=True)
    return out, time.time() - start, False


# ---------------------------------------------------------------------- cameras
def city_to_world(partition, p_city: np.ndarray) -> np.ndarray:
    return p_city @ partition.rotation.numpy() + partition.origin.numpy()


def camera_from_city_pose(partition, right, up, back, eye, width: int, height: int, fov_deg: float):
    """A pinhole camera in nerfstudio's world frame from a pose given in the city frame."""
    from nerfstudio.cameras.cameras import Cameras

    rot = partition.rotation.numpy()
    axes = np.stack([right, up, back], axis=1)
    c2w = np.concatenate([rot.T @ axes, city_to_world(partition, np.asarray(eye))[:, None]], axis=1)
    focal = 0.5 * width / math.tan(math.radians(fov_deg / 2))
    return Cameras(camera_to_worlds=torch.from_numpy(c2w[None].astype(np.float32)), fx=focal, fy=focal,
                   cx=width / 2, cy=height / 2, width=width, height=height)


def bench_views(pipeline, width: int, height: int, fov_deg: float = 60.0):
    """One block from 45 degrees, a street-level capture camera near the centre, the whole city from above."""
    from mclnf_city.export import look_at_block
    from types import SimpleNamespace

    part = pipeline.partition
    nx, ny = part.grid
    centre_block = (nx // 2 - 1) * ny + (ny // 2 - 1)  # south-west of the centre: its view looks north over it
    views = {"block (45 deg)": look_at_block(SimpleNamespace(partition=part), centre_block, width, height, 45.0, fov_deg)}

    c2w = pipeline.datamanager.train_dataset.cameras.camera_to_worlds
    pos = part.to_city(c2w[:, :3, 3].double()).numpy()
    fwd = part.dirs_to_city(-c2w[:, :3, 2].double()).numpy()
    z0, z1 = part.z_range
    low = (pos[:, 2] < z0 + 0.3 * (z1 - z0)) & (np.abs(fwd[:, 2]) < 0.2)  # street level, looking ahead
    if low.any():
        i = np.flatnonzero(low)[np.argmin(np.linalg.norm(pos[low, :2], axis=1))]
        back = -fwd[i] / np.linalg.norm(fwd[i])
        right = np.cross([0.0, 0.0, 1.0], back)
        right /= np.linalg.norm(right)
        views["street level"] = camera_from_city_pose(part, right, np.cross(back, right), back, pos[i], width, height, fov_deg)

    box = part.city_box().numpy()
    centre = box.mean(0)
    half = 0.5 * float(np.max(box[1, :2] - box[0, :2]))
    eye = np.array([centre[0], centre[1], box[1, 2] + 1.05 * half / math.tan(math.radians(fov_deg / 2))])
    views["overview (top-down)"] = camera_from_city_pose(part, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], eye, width, height, fov_deg)
    return views, centre_block


def centre_square(partition, n: int) -> List[int]:
    """The n blocks (n a square) nearest the grid centre: a smaller city inside the trained one."""
    nx, ny = partition.grid
    side = int(round(math.sqrt(n)))
    if side * side != n or side > min(nx, ny):
        raise ValueError(f"--render-sizes: {n} is not a square of at most {min(nx, ny)}^2 blocks")
    x0, y0 = (nx - side) // 2, (ny - side) // 2
    return [ix * ny + iy for ix in range(x0, x0 + side) for iy in range(y0, y0 + side)]


# ---------------------------------------------------------------------- phases
def stream_city(args, data: Path, work: Path, sampler: RssSampler) -> Tuple[object, Dict]:
    """Train every block with the tiny preset, recording memory, loads and time as it goes."""
    config = preset_config("mclnf-city-tiny", data, work / "runs", args.steps_per_block, args.rays, grid=tuple(args.blocks))
    config.pipeline.model.max_loaded_blocks = args.max_loaded_blocks
    if args.ray_samples:
        config.pipeline.model.num_coarse_samples, config.pipeline.model.num_fine_samples = args.ray_samples
    config.steps_per_save = 1_000_000_000  # checkpoints still follow every block (pipeline.finish_block)
    t0 = time.time()
    rss_before_setup = proc_status_mb()["VmRSS"]
    trainer = setup_trainer(config)
    setup_s = time.time() - t0
    pipeline = trainer.pipeline
    probe = CacheProbe(pipeline.model)
    rss_after_setup = proc_status_mb()["VmRSS"]
    steps: List[Dict] = []
    blocks: List[Dict] = []
    report_s = [0.0]

    def time_step(original):
        def run(step):
            loads, start = len(probe.loads), time.perf_counter()
            result = original(step)
            steps.append({"step": step, "s": time.perf_counter() - start, "loads": len(probe.loads) - loads})
            return result
        return run

    def after_block(original):
        def run(b, step):
            start = time.perf_counter()
            original(b, step)
            status = proc_status_mb()
            blocks.append({"block": b, "index": len(blocks), "finish_s": time.perf_counter() - start,
                           "rss_mb": status["VmRSS"], "hwm_mb": status["VmHWM"], "cached": len(pipeline.model.frozen.loaded()),
                           "loads_so_far": len(probe.loads), "t": time.time() - sampler.t0})
            print(f"[bench_scale] block {b} ({len(blocks)}/{len(pipeline.stream)}): RSS {status['VmRSS']:,.0f} MB, "
                  f"{len(pipeline.model.frozen.loaded())} blocks cached, {len(probe.loads)} reads from disk so far", flush=True)
        return run

    def time_report(original):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            report_s[0] = time.perf_counter() - start
            return out
        return run

    trainer.train_iteration = time_step(trainer.train_iteration)
    pipeline.finish_block = after_block(pipeline.finish_block)
    pipeline.report.write = time_report(pipeline.report.write)
    t1 = time.time()
    trainer.train()
    train_s = time.time() - t1
    del trainer.train_iteration, pipeline.finish_block, pipeline.report.write
    probe.remove()

    store = pipeline.store
    store.refresh()
    files = {b: (store.root / store.block(b)["file"]).stat().st_size for b in pipeline.stream}
    seconds = [store.block(b)["seconds"] for b in pipeline.stream]
    after_warmup = [s["s"] for s in steps if s["step"] % args.steps_per_block >= 2]
    # Does a step get slower, or read more from disk, as finished blocks pile up? First vs last blocks.
    k, n = max(1, min(args.max_loaded_blocks, len(pipeline.stream) // 4)), len(pipeline.stream)
    by_position = {"first": step_window(steps, args.steps_per_block, 0, k), "last": step_window(steps, args.steps_per_block, n - k, n)}
    dm = pipeline.datamanager
    index = dm.pixel_index
    pool_bytes = {b: index.num_pixels(b) * 7 for b in index.blocks}  # int32 pixel id + uint8 RGB per assignment
    capture_bytes = {"pixels": int((dm.widths * dm.heights).sum()), "pixel_assignments": sum(index.num_pixels(b) for b in index.blocks),
                     "block_pool_bytes_max": max(pool_bytes.values()), "pools_held_at_end_bytes": sum(p.nbytes for p in dm._pools.values()),
                     "pixel_index_disk_bytes": sum(f.stat().st_size for f in index.root.iterdir())}
    # RSS after block k, once the cache is full (with a cache as large as the city: the second half,
    # cached blocks included): a straight-line fit, MB per finished block.
    tail = [r for r in blocks if r["index"] >= min(args.max_loaded_blocks, len(blocks) // 2)]
    slope = float(np.polyfit([r["index"] for r in tail], [r["rss_mb"] for r in tail], 1)[0]) if len(tail) > 2 else None
    disk = {
        "block_file_bytes": {str(b): n for b, n in files.items()},
        "block_file_mean_bytes": statistics.mean(files.values()),
        "manifest_bytes": store.manifest_path.stat().st_size,
        "prior_bytes": (store.root / store.manifest["prior"]["file"]).stat().st_size,
        "partition_bytes": (store.root / "partition.json").stat().st_size,
        "store_total_bytes": sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file() and "report" not in p.parts),
        "checkpoint_bytes": sum(p.stat().st_size for p in trainer.checkpoint_dir.glob("*.ckpt")),
        "block_tensor_bytes": tensor_groups(store.load_block(pipeline.stream[0])),
    }
    part = pipeline.partition
    scale = json.loads((trainer.base_dir / "dataparser_transforms.json").read_text())["scale"]
    result = {
        "run_dir": str(trainer.base_dir),
        "blocks": len(pipeline.stream),
        "grid": list(part.grid),
        "block_edge_m": float(part.x_edges[1] - part.x_edges[0]) / scale,
        "train_images": len(dm.train_dataset),
        "test_images": len(dm.eval_dataset),
        "rays_per_block": {str(b): n for b, n in dm.rays_per_block().items()},
        "steps_per_block": args.steps_per_block,
        "rays_per_step": args.rays,
        "ray_samples": [config.pipeline.model.num_coarse_samples, config.pipeline.model.num_fine_samples],
        "max_loaded_blocks": args.max_loaded_blocks,
        "setup_s": setup_s,
        "train_s": train_s,
        "report_s": report_s[0],
        "s_per_step_median": statistics.median(after_warmup),
        "s_per_step_mean": statistics.mean(s["s"] for s in steps),
        "block_seconds_manifest": {"median": statistics.median(seconds), "mean": statistics.mean(seconds), "max": max(seconds),
                                   "per_block": {str(b): s for b, s in zip(pipeline.stream, seconds)}},
        "finish_s_median": statistics.median(r["finish_s"] for r in blocks[:-1] or blocks),
        "reads_from_disk_while_training": len(probe.loads),  # steps, per-block evaluation and the final report
        "reads_in_training_steps": sum(s["loads"] for s in steps),
        "reads_per_step_mean": statistics.mean(s["loads"] for s in steps),
        "steps_first_vs_last_blocks": by_position,
        "rss_mb": {"before_setup": rss_before_setup, "after_setup": rss_after_setup,
                   "peak_sampled": sampler.peak(), "hwm_end": proc_status_mb()["VmHWM"],
                   "slope_mb_per_block_after_cache_full": slope,
                   "after_block": [{k: r[k] for k in ("index", "block", "rss_mb", "cached", "loads_so_far", "t")} for r in blocks]},
        "capture_bytes_in_datamanager": capture_bytes,
        "disk": disk,
        "steps": [{"step": s["step"], "s": round(s["s"], 4), "loads": s["loads"]} for s in steps],
    }
    return pipeline, result


def step_window(steps: List[Dict], steps_per_block: int, first: int, last: int) -> Dict:
    """Median seconds and mean disk reads per step of the blocks at stream positions [first, last)."""
    chosen = [s for s in steps if first <= s["step"] // steps_per_block < last]
    return {"blocks": [first + 1, last], "s_per_step_median": statistics.median(s["s"] for s in chosen),
            "reads_per_step_mean": statistics.mean(s["loads"] for s in chosen)}


def tensor_groups(state: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Bytes of a block's state by part: the hash table, the heads, the per-image parts."""
    groups: Dict[str, int] = {}
    for k, v in state.items():
        g = {"encoding": "hash_grid", "appearance": "appearance_embedding", "image_mask": "image_index", "image_ids": "image_index"}.get(k.split(".")[0], "heads_and_geometry")
        groups[g] = groups.get(g, 0) + v.numel() * v.element_size()
    return groups


@torch.no_grad()
def render_scaling(pipeline, args) -> List[Dict]:
    """Render the views with N finished blocks, cold and warm cache; count disk reads per view."""
    model = pipeline.model
    model.eval()
    all_done, active = set(model.done_blocks), int(model.active_block)
    model.active_block.fill_(-1)  # the trained slot renders nothing: only finished blocks, from the store
    model.frozen.capacity = args.max_loaded_blocks
    views, _ = bench_views(pipeline, *args.render_size)
    probe = CacheProbe(model)
    rows = []
    sizes = [(n, args.max_loaded_blocks) for n in args.render_sizes]
    if max(args.render_sizes) > args.max_loaded_blocks:
        sizes.append((max(args.render_sizes), max(args.render_sizes)))  # control: a cache as large as the city
    try:
        for n, capacity in sizes:
            model.done_blocks = set(centre_square(pipeline.partition, n)) & all_done
            model.frozen.capacity = capacity
            for name, camera in views.items():
                model.frozen._blocks.clear()
                gc.collect()
                row = {"view": name, "city_blocks": len(model.done_blocks), "cache": capacity,
                       "pixels": int(camera.width) * int(camera.height)}
                for state in ("cold", "warm"):
                    probe.reset()
                    start = time.perf_counter()
                    with model.for_evaluation():
                        model.get_outputs_for_camera(camera)
                    row[state] = {"ms": 1000 * (time.perf_counter() - start), "reads": len(probe.loads),
                                  "blocks_touched": len(probe.requested), "max_cached": probe.max_cached,
                                  "ms_per_read": 1000 * statistics.mean(probe.miss_seconds) if probe.miss_seconds else None}
                rows.append(row)
                print(f"[bench_scale] {name:20s} {row['city_blocks']:3d} blocks, cache {capacity:3d}: cold {row['cold']['ms']:7.0f} ms "
                      f"({row['cold']['reads']} reads, {row['cold']['blocks_touched']} blocks touched), warm {row['warm']['ms']:7.0f} ms "
                      f"({row['warm']['reads']} reads)", flush=True)
    finally:
        probe.remove()
        model.done_blocks, model.frozen.capacity = all_done, args.max_loaded_blocks
        model.active_block.fill_(active)
    return rows


class _Stop(Exception):
    pass


def full_preset_steps(args, data: Path, work: Path) -> Dict:
    """Seconds per step of the mclnf-city preset (4096 rays) on the same capture: the first block only."""
    config = preset_config("mclnf-city", data, work / "runs_full", args.full_steps, grid=tuple(args.blocks))
    config.steps_per_save = 1_000_000_000
    trainer = setup_trainer(config)
    times: List[float] = []
    original = trainer.train_iteration

    def run(step):
        start = time.perf_counter()
        out = original(step)
        times.append(time.perf_counter() - start)
        return out

    def stop(b, step):
        raise _Stop

    trainer.train_iteration, trainer.pipeline.finish_block = run, stop
    try:
        trainer.train()
    except _Stop:
        pass
    from mclnf_city.fields import BlockField

    spec = config.pipeline.model.field
    n_images = len(trainer.pipeline.datamanager.train_dataset)
    block = tensor_groups(BlockField(spec, n_images).block_state())
    return {"preset": "mclnf-city", "rays_per_step": config.pipeline.datamanager.train_num_rays_per_batch,
            "steps_per_block": 2000, "s_per_step_median": statistics.median(times[2:]), "steps_timed": len(times[2:]),
            "block_tensor_bytes": block, "train_images": n_images,
            "appearance_bytes_per_image": 4 * spec.appearance_embedding_dim + 8 + 1}  # float32 embedding, int64 image id, bool mask


# ---------------------------------------------------------------------- output
def print_tables(result: Dict) -> None:
    s, disk = result["stream"], result["stream"]["disk"]
    rss = s["rss_mb"]
    after = {r["index"] + 1: r["rss_mb"] for r in rss["after_block"]}
    marks = sorted({k for k in (1, s["max_loaded_blocks"], s["blocks"] // 2, s["blocks"]) if k in after})
    rows = [
        ("blocks (grid)", f"{s['blocks']} ({s['grid'][0]}x{s['grid'][1]}), block edge {s['block_edge_m']:.0f} m"),
        ("train images / test images", f"{s['train_images']} / {s['test_images']}"),
        ("setup (load capture, assign pixels)", f"{s['setup_s']:.0f} s"),
        ("stream wall time", f"{s['train_s']:.0f} s (city report at the end {s['report_s']:.0f} s)"),
        ("s per training step (median)", f"{s['s_per_step_median']:.3f} s at {s['rays_per_step']} rays"),
        ("s per block (manifest, median / max)", f"{s['block_seconds_manifest']['median']:.1f} / {s['block_seconds_manifest']['max']:.1f}"),
        ("RSS after block " + ", ".join(map(str, marks)), " / ".join(f"{after[k]:,.0f}" for k in marks) + " MB"),
        ("RSS slope once the cache is full", f"{rss['slope_mb_per_block_after_cache_full'] or 0:+.2f} MB per block"),
        ("peak RSS (sampled) / VmHWM", f"{rss['peak_sampled']:,.0f} / {rss['hwm_end']:,.0f} MB"),
        ("disk per block / manifest", f"{disk['block_file_mean_bytes'] / MB:.2f} MB / {disk['manifest_bytes'] / 1024:.0f} KB"),
        ("block reads from disk: stream / training steps", f"{s['reads_from_disk_while_training']:,} / {s['reads_in_training_steps']:,} ({s['reads_per_step_mean']:.2f} per step)"),
    ]
    fl = s["steps_first_vs_last_blocks"]
    rows += [
        (f"blocks {b['blocks'][0]}-{b['blocks'][1]}: s per step, reads per step", f"{b['s_per_step_median']:.3f} s, {b['reads_per_step_mean']:.2f}")
        for b in (fl["first"], fl["last"])
    ]
    if result.get("full_preset"):
        f = result["full_preset"]
        rows.append(("mclnf-city preset, s per step", f"{f['s_per_step_median']:.3f} s at {f['rays_per_step']} rays"))
    width = max(len(r[0]) for r in rows)
    print("\nstream")
    for k, v in rows:
        print(f"  {k:{width}s}  {v}")
    print(f"\n{'view':20s} {'blocks':>6s} {'cache':>5s} {'touched':>7s} {'cold ms':>8s} {'reads':>5s} {'ms/read':>7s} {'warm ms':>8s} {'reads':>5s}")
    for r in result["render"]:
        c, w = r["cold"], r["warm"]
        per = f"{c['ms_per_read']:.1f}" if c["ms_per_read"] else "-"
        print(f"{r['view']:20s} {r['city_blocks']:6d} {r['cache']:5d} {c['blocks_touched']:7d} {c['ms']:8.0f} {c['reads']:5d} {per:>7s} {w['ms']:8.0f} {w['reads']:5d}")


def main() -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    g = parser.add_argument_group("city (mclnf_city.scenes.make_city)")
    g.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_scale", help="capture and runs go here (the city is reused)")
    g.add_argument("--blocks", type=int, nargs=2, default=[8, 8], metavar=("NX", "NY"), help="city blocks, also --pipeline.grid")
    g.add_argument("--seed", type=int, default=7, help="city seed")
    g.add_argument("--image-size", type=int, nargs=2, default=[48, 36], metavar=("W", "H"), help="capture image size (px)")
    g.add_argument("--drone-line-spacing", type=float, default=30.0, help="m between drone flight lines")
    g.add_argument("--drone-step", type=float, default=20.0, help="m between drone shots along a line")
    g.add_argument("--street-paths", default="interior", choices=["all", "interior", "none"], help="streets walked at street level")
    g.add_argument("--street-step", type=float, default=40.0, help="m between street-level stops")
    g = parser.add_argument_group("stream (mclnf-city-tiny)")
    g.add_argument("--steps-per-block", type=int, default=20, help="training steps per block")
    g.add_argument("--rays", type=int, default=1024, help="rays per training step")
    g.add_argument("--max-loaded-blocks", type=int, default=8, help="finished blocks in memory at once (LRU cache)")
    g.add_argument("--sample-interval", type=float, default=0.2, help="seconds between VmRSS samples")
    g.add_argument("--ray-samples", type=int, nargs=2, default=None, metavar=("COARSE", "FINE"),
                   help="samples per ray (default: the preset's)")
    g = parser.add_argument_group("rendering")
    g.add_argument("--render-sizes", type=int, nargs="+", default=[4, 16, 64], help="city sizes in blocks (squares) to render")
    g.add_argument("--render-size", type=int, nargs=2, default=[128, 96], metavar=("W", "H"), help="rendered view size (px)")
    g = parser.add_argument_group("mclnf-city preset (its step time feeds memory.py's projection)")
    g.add_argument("--full-steps", type=int, default=8, help="steps of the mclnf-city preset to time, measured (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json", help="JSON written here")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a 2x2-block city with tiny images and a few steps: checks that the benchmark runs "
                             "(other options still override)")
    # --smoke: a sparse flight, few test views to render in the per-block evaluations and the city
    # report; a cache of 3 of the 4 blocks, so the render table still has its cache-as-large-as-the-city
    # control rows.
    smoke_dir = Path(tempfile.gettempdir()) / "bench_scale_smoke"
    args = parse_args(parser, work=smoke_dir, out=smoke_dir / "bench_scale.json", blocks=[2, 2], seed=3, image_size=[40, 30],
                      drone_line_spacing=60.0, drone_step=40.0, street_step=80.0,
                      steps_per_block=3, rays=64, max_loaded_blocks=3, ray_samples=[8, 8],
                      render_sizes=[4], render_size=[16, 12], full_steps=3)
    if args.steps_per_block < 3 or 0 < args.full_steps < 3:
        parser.error("--steps-per-block and --full-steps: at least 3 (the first two steps are warm-up, not timed)")

    args.work.mkdir(parents=True, exist_ok=True)
    sampler = RssSampler(args.sample_interval)
    sampler.start()
    data, gen_s, reused = make_city(args, args.work / "city")
    print(f"[bench_scale] city {data}: {'reused' if reused else f'generated in {gen_s:.0f} s'}", flush=True)
    pipeline, stream = stream_city(args, data, args.work, sampler)
    render = render_scaling(pipeline, args)
    stream["rss_mb"]["peak_sampled_incl_render"] = sampler.peak()
    del pipeline
    gc.collect()
    full = full_preset_steps(args, data, args.work) if args.full_steps > 0 else None
    sampler.stop()
    result = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?") + " python " + " ".join(map(shlex.quote, sys.argv)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "city": {"path": str(data), "seed": args.seed, "options": city_options(args), "generation_s": gen_s, "reused": reused},
        "stream": stream,
        "render": render,
        "full_preset": full,
        "rss_samples": sampler.samples[:: max(1, int(round(1.0 / args.sample_interval)))],  # about one a second
    }
    write_json(args.out, result)
    print_tables(result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

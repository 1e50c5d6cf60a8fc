"""Memory on a city-sized capture: peak RSS of a `mclnf-city` stream against the capture's size.

    python tools/bench/memory.py                       # writes tools/bench/results/memory.json
    python tools/bench/memory.py --smoke --work /tmp/w --out /tmp/memory.json   # seconds: the test suite runs this

1. Capture: `mclnf_city.scenes.make_city` (`--city-blocks` x `--city-blocks` city blocks, street
   stops every `--street-step` m, `--image-size`, JPEG), rendered by `--workers` processes.
   Reused when `<work>/capture` already holds one made with the same options.
2. mclnf-city: the `mclnf-city-tiny` preset, `--pipeline.grid G G`, `--steps-per-block` steps of
   `--rays` rays per block, every `--eval-interval`-th image a test view (rendered at most
   `--eval-max-pixels` large), in a worker process.
   Measured: the worker's peak RSS (the kernel's `ru_maxrss`), set-up time (the pixel index
   included), each block's pixel-load time and pixels, seconds per step, the report's time,
   and disk per block (block file, pixel file).
3. nerfacto, for contrast: `ns-train nerfacto` as shipped (`implementation torch`) on the same
   capture, `--nerfacto-steps` steps, its RSS sampled every second; stopped when it passes
   `--nerfacto-cap-gb` (recorded as such) so the machine survives.
4. Projection to `--area-km2`: the per-pixel and per-block costs measured here (RSS, pool bytes
   per pixel, pixel-index bytes, set-up time per pixel, blocks a pixel's ray crosses) and the
   `mclnf-city` preset's step time and block size from `--preset-timing` (`scale.py`'s
   `full_preset`), scaled with every assumption named in the JSON (`projection.assumptions`).
   `--project-from RESULT` redoes only this step on an earlier result.

Every number is one run on a shared CPU: the point is what grows with the capture and what does not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import psutil

from common import RESULTS, ROOT, parse_args, run_to_log, write_json

MB = 1024.0 * 1024.0


def city_options(args) -> Dict:
    w, h = args.image_size
    return dict(blocks_x=args.city_blocks, blocks_y=args.city_blocks, image_width=w, image_height=h, supersample=1,
                street_step=args.street_step, image_format="jpg", num_points=20_000)


def make_capture(args, out: Path) -> Dict:
    """Generate the capture, or reuse it when it was made with these options."""
    from mclnf_city.scenes.make_city import generate_city

    opts = city_options(args)
    made = out / "gt" / "city.json"
    if made.exists():
        old = json.loads(made.read_text())
        if old["seed"] == args.seed and all(old["options"].get(k) == v for k, v in opts.items()):
            return {"reused": True, "seconds": 0.0}
    start = time.time()
    generate_city(out, seed=args.seed, overwrite=True, progress=not args.smoke, verbose=False, workers=args.workers, **opts)
    return {"reused": False, "seconds": time.time() - start}


def capture_facts(data: Path) -> Dict:
    from PIL import Image

    frames = json.loads((data / "transforms.json").read_text())["frames"]
    with Image.open(data / frames[0]["file_path"]) as im:
        w, h = im.size
    files = [data / f["file_path"] for f in frames]
    return {"images": len(frames), "width": w, "height": h, "pixels": len(frames) * w * h,
            "raw_rgb_bytes": len(frames) * w * h * 3, "image_file_bytes": sum(f.stat().st_size for f in files)}


# ---------------------------------------------------------------------- mclnf-city worker
def worker_mclnf(args) -> None:
    from mclnf_city.trainer import preset_config, setup_trainer

    data, work = Path(args.data), Path(args.work_dir)
    config = preset_config("mclnf-city-tiny", data, work / "runs", args.steps_per_block, args.rays, grid=tuple(args.grid))
    config.pipeline.datamanager.dataparser.eval_interval = args.eval_interval
    config.pipeline.report_max_pixels = config.pipeline.block_eval_max_pixels = args.eval_max_pixels
    if args.ray_samples:
        config.pipeline.model.num_coarse_samples, config.pipeline.model.num_fine_samples = args.ray_samples
    config.steps_per_save = 1_000_000_000
    t0 = time.time()
    trainer = setup_trainer(config)
    setup_s = time.time() - t0
    pipeline = trainer.pipeline
    dm = pipeline.datamanager
    loads, steps, report_s = [], [], [0.0]
    original_pool, original_step, original_write = dm.pool, trainer.train_iteration, pipeline.report.write

    def pool(b):
        fresh = b not in dm._pools
        start = time.perf_counter()
        result = original_pool(b)
        if fresh:
            loads.append({"block": b, "s": time.perf_counter() - start, "pixels": len(result), "images": len(result.images),
                          "bytes": result.nbytes, "rss_mb": psutil.Process().memory_info().rss / MB})
        return result

    def step(s):
        start = time.perf_counter()
        out = original_step(s)
        steps.append(time.perf_counter() - start)
        return out

    def write(*a, **k):
        start = time.perf_counter()
        out = original_write(*a, **k)
        report_s[0] = time.perf_counter() - start
        return out

    dm.pool, trainer.train_iteration, pipeline.report.write = pool, step, write
    rss_after_setup = psutil.Process().memory_info().rss / MB
    t1 = time.time()
    trainer.train()
    train_s = time.time() - t1
    store = pipeline.store
    store.refresh()
    block_files = [(store.root / store.block(b)["file"]).stat().st_size for b in pipeline.stream]
    index = dm.pixel_index
    pixel_files = [(index.root / index.blocks[b]["file"]).stat().st_size for b in pipeline.stream]
    first_steps = set(range(0, len(steps), args.steps_per_block))  # a block's first step includes its pixel load
    result = {
        "blocks_trained": len(pipeline.stream), "grid": list(pipeline.partition.grid),
        "train_images": len(dm.train_dataset), "test_images": len(dm.eval_dataset),
        "setup_s": setup_s, "train_s": train_s, "report_s": report_s[0], "rss_after_setup_mb": rss_after_setup,
        "s_per_step_median": statistics.median(s for i, s in enumerate(steps) if i not in first_steps),
        "block_load_s": {"median": statistics.median(r["s"] for r in loads), "max": max(r["s"] for r in loads)},
        "block_pixels": {"median": statistics.median(r["pixels"] for r in loads), "max": max(r["pixels"] for r in loads)},
        "block_pool_mb_max": max(r["bytes"] for r in loads) / MB,
        "block_file_bytes_mean": statistics.mean(block_files),
        "pixel_file_bytes_mean": statistics.mean(pixel_files), "pixel_file_bytes_max": max(pixel_files),
        "loads": loads,
        "test_psnr": json.loads((store.root / "report" / "metrics.json").read_text())["mean"].get("psnr"),
    }
    write_json(Path(args.result), result)


# ---------------------------------------------------------------------- nerfacto
def run_nerfacto(args, data: Path, work: Path) -> Dict:
    """`ns-train nerfacto` as shipped for a few steps, RSS sampled; stopped past the cap."""
    cmd = [sys.executable, str(Path(__file__).parent / "ns_train_offline.py"), "nerfacto", "--data", str(data),
           "--output-dir", str(work / "nerfacto"), "--vis", "tensorboard", "--machine.device-type", "cpu",
           "--pipeline.model.implementation", "torch", "--max-num-iterations", str(args.nerfacto_steps),
           "--steps-per-eval-batch", "1000000", "--steps-per-eval-image", "1000000", "--steps-per-eval-all-images", "1000000",
           "nerfstudio-data", "--eval-mode", "interval", "--eval-interval", str(args.eval_interval)]
    log = work / "nerfacto.log"
    start, peak, stopped = time.time(), 0.0, False
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]) / MB
            except psutil.Error:
                rss = 0.0
            peak = max(peak, rss)
            if rss > args.nerfacto_cap_gb * 1024:
                stopped = True
                for p in [*ps.children(recursive=True), ps]:
                    p.kill()
                break
            time.sleep(1.0)
        proc.wait()
    tail = log.read_text(errors="replace")[-2000:]
    return {"peak_rss_mb_sampled": peak, "seconds": time.time() - start, "stopped_at_cap": stopped,
            "cap_gb": args.nerfacto_cap_gb, "exit_code": proc.returncode, "steps": args.nerfacto_steps,
            "log_tail": tail if proc.returncode not in (0, None) and not stopped else ""}


# ---------------------------------------------------------------------- projection
def projection(args, capture: Dict, mclnf: Dict, preset: Dict) -> Dict:
    """Per-pixel and per-block costs measured on this capture, scaled to --area-km2; `preset` is the
    `mclnf-city` preset's measured step time and block tensors (scale.py's `full_preset`)."""
    a = {"area_km2": args.area_km2, "block_edge_m": args.block_edge_m, "images_taken_per_block": args.images_per_block,
         "pixels_per_image": args.pixels_per_image, "steps_per_block": preset["steps_per_block"],
         "gpu_speedup_vs_this_cpu": args.gpu_speedup, "gpus": args.gpus, "cache_blocks": args.max_loaded_blocks,
         "preset_timing": f"{preset['source']}: {preset['s_per_step_median']:.3f} s per step at {preset['rays_per_step']} rays"}
    loads = {r["block"]: r for r in mclnf["loads"]}  # first load of every block
    train_pixels = mclnf["train_images"] * capture["width"] * capture["height"]
    block_pixels_total = sum(r["pixels"] for r in loads.values())
    crossings = {  # measured on this capture: how many blocks see a pixel, and an image
        "blocks_per_pixel": block_pixels_total / train_pixels,
        "blocks_per_image": sum(r["images"] for r in loads.values()) / mclnf["train_images"],
    }
    pool_bytes_per_pixel = max(r["bytes"] / r["pixels"] for r in loads.values())
    mean_block_pixels = block_pixels_total / len(loads)
    index_bytes_per_pixel = mclnf["pixel_file_bytes_mean"] * len(loads) / block_pixels_total
    largest = max(r["bytes"] for r in loads.values()) / MB
    # RSS that is neither the capture's pixels nor the cache: the process after set-up, plus what a
    # step needs beyond the largest pool (the measured peak minus both).
    base_mb = mclnf["rss_after_setup_mb"]
    step_mb = max(0.0, mclnf["peak_rss_mb"] - base_mb - largest)
    blocks = int(math.ceil(args.area_km2 * 1e6 / args.block_edge_m**2))
    block_pixels = args.images_per_block * args.pixels_per_image * crossings["blocks_per_pixel"]
    images_seeing_block = args.images_per_block * crossings["blocks_per_image"]
    fixed = preset["block_tensor_bytes"]["hash_grid"] + preset["block_tensor_bytes"]["heads_and_geometry"]
    block_file = fixed + preset["appearance_bytes_per_image"] * images_seeing_block  # own images' embeddings only
    gpu_s_per_block = preset["steps_per_block"] * preset["s_per_step_median"] / args.gpu_speedup
    setup_s_per_pixel = mclnf["setup_s"] / train_pixels
    return {
        "assumptions": a,
        "measured_inputs": {**crossings, "pool_bytes_per_pixel": pool_bytes_per_pixel, "index_bytes_per_block_pixel": index_bytes_per_pixel,
                            "rss_after_setup_mb": base_mb, "step_mb_beyond_pool": step_mb, "setup_s_per_capture_pixel": setup_s_per_pixel,
                            "mean_block_pixels": mean_block_pixels, "block_fixed_bytes": fixed,
                            "appearance_bytes_per_image": preset["appearance_bytes_per_image"]},
        "blocks": blocks,
        "images": blocks * args.images_per_block,
        "block_pixels": block_pixels,
        "images_seeing_a_block": images_seeing_block,
        "ram_per_worker_gb": (base_mb * MB + step_mb * MB + block_pixels * pool_bytes_per_pixel + args.max_loaded_blocks * block_file) / 1e9,
        "block_pool_gb": block_pixels * pool_bytes_per_pixel / 1e9,
        "disk_per_block_mb": block_file / MB,
        "disk_blocks_total_gb": blocks * block_file / 1e9,
        # runs are about one per image row: bytes per pixel fall as images grow, so this is an upper bound
        "pixel_index_total_gb": blocks * block_pixels * index_bytes_per_pixel / 1e9,
        "setup_cpu_hours": blocks * args.images_per_block * args.pixels_per_image * setup_s_per_pixel / 3600,
        "gpu_hours_total": blocks * gpu_s_per_block / 3600,
        "wall_hours_on_gpus": blocks * gpu_s_per_block / args.gpus / 3600,
    }


def preset_timing(path: Path) -> Dict:
    full = json.loads(path.read_text()).get("full_preset")
    if not full:
        raise SystemExit(f"{path}: no `full_preset` (run tools/bench/scale.py with --full-steps > 0)")
    path = path.resolve()
    return {**full, "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}


def print_projection(p: Dict) -> None:
    a = p["assumptions"]
    print(f"[bench_memory] projection to {a['area_km2']:g} km2 ({p['blocks']:,} blocks of {a['block_edge_m']:g} m, "
          f"{a['images_taken_per_block']:g} images of {a['pixels_per_image'] / 1e6:g} MP taken per block): "
          f"RAM per worker {p['ram_per_worker_gb']:.1f} GB (block pool {p['block_pool_gb']:.1f} GB), "
          f"block files {p['disk_blocks_total_gb']:.0f} GB, pixel index {p['pixel_index_total_gb']:.0f} GB, "
          f"set-up {p['setup_cpu_hours']:,.0f} CPU-h, training {p['gpu_hours_total']:,.0f} GPU-h "
          f"({p['wall_hours_on_gpus']:.1f} h on {a['gpus']} GPUs)", flush=True)


# ---------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/mclnf_bench_memory"))
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--city-blocks", type=int, default=10, help="city blocks per side of the generated city")
    p.add_argument("--street-step", type=float, default=7.5, help="metres between street-level stops")
    p.add_argument("--image-size", type=int, nargs=2, default=[640, 480])
    p.add_argument("--workers", type=int, default=2, help="processes rendering the capture")
    p.add_argument("--grid", type=int, nargs=2, default=[10, 10], help="mclnf-city's partition")
    p.add_argument("--steps-per-block", type=int, default=10)
    p.add_argument("--rays", type=int, default=1024)
    p.add_argument("--ray-samples", type=int, nargs=2, default=None)
    p.add_argument("--eval-interval", type=int, default=100, help="every Nth image is a test view")
    p.add_argument("--eval-max-pixels", type=int, default=10_000, help="test views (per block and in the report) rendered at most this large")
    p.add_argument("--nerfacto", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--nerfacto-steps", type=int, default=2)
    p.add_argument("--nerfacto-cap-gb", type=float, default=18.0)
    g = p.add_argument_group("projection (assumptions, all stated in the JSON)")
    g.add_argument("--area-km2", type=float, default=100.0, help="city area")
    g.add_argument("--block-edge-m", type=float, default=100.0, help="block edge length")
    g.add_argument("--images-per-block", type=float, default=200.0, help="training images taken in each block")
    g.add_argument("--pixels-per-image", type=float, default=1.0e6, help="pixels per training image")
    g.add_argument("--max-loaded-blocks", type=int, default=64, help="finished blocks cached per worker")
    g.add_argument("--gpu-speedup", type=float, default=50.0, help="how many times faster a GPU runs a step of the mclnf-city preset than this CPU")
    g.add_argument("--gpus", type=int, default=64, help="GPUs training blocks in parallel")
    g.add_argument("--preset-timing", type=Path, default=RESULTS / "scale.json",
                   help="JSON with the mclnf-city preset's measured step time and block tensors (`full_preset`, from scale.py)")
    g.add_argument("--project-from", type=Path, default=None, help="redo only the projection on this earlier result; writes --out")
    p.add_argument("--smoke", action="store_true", help="a tiny city in seconds (the test suite runs this)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = parse_args(p, city_blocks=1, street_step=40.0, image_size=[40, 30], workers=1, grid=[2, 2], steps_per_block=2,
                      rays=64, ray_samples=[8, 8], eval_interval=8, eval_max_pixels=0, nerfacto_steps=1, nerfacto_cap_gb=8.0,
                      out=Path("/tmp/mclnf_bench_memory_smoke.json"), work=Path("/tmp/mclnf_bench_memory_smoke"))
    if args.worker:
        worker_mclnf(args)
        return
    if args.project_from:
        result = json.loads(args.project_from.read_text())
        result["projection"] = projection(args, result["capture"], result["mclnf_city"], preset_timing(args.preset_timing))
        print_projection(result["projection"])
        write_json(args.out, result)
        print(f"[bench_memory] wrote {args.out}")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "capture"
    generation = make_capture(args, data)
    facts = capture_facts(data)
    made = "reused" if generation["reused"] else f"made in {generation['seconds']:.0f} s"
    print(f"[bench_memory] capture: {facts['images']:,} images of {facts['width']}x{facts['height']}, "
          f"{facts['pixels'] / 1e9:.2f} G pixels, {facts['raw_rgb_bytes'] / 1e9:.2f} GB raw RGB ({made})", flush=True)
    run = args.work / "mclnf"
    run.mkdir(exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", "--data", str(data), "--work-dir", str(run), "--result", str(run / "result.json"),
           "--grid", *map(str, args.grid), "--steps-per-block", str(args.steps_per_block), "--rays", str(args.rays),
           "--eval-interval", str(args.eval_interval), "--eval-max-pixels", str(args.eval_max_pixels)]
    if args.ray_samples:
        cmd += ["--ray-samples", *map(str, args.ray_samples)]
    status, usage = run_to_log(cmd, dict(os.environ, PYTHONWARNINGS="ignore"), run / "log.txt")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mclnf-city worker failed, see {run / 'log.txt'}:\n{(run / 'log.txt').read_text(errors='replace')[-3000:]}")
    mclnf = json.loads((run / "result.json").read_text())
    mclnf["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    print(f"[bench_memory] mclnf-city: peak RSS {mclnf['peak_rss_mb']:,.0f} MB, set-up {mclnf['setup_s']:.0f} s, "
          f"block load {mclnf['block_load_s']['median']:.1f} s (median), {mclnf['s_per_step_median']:.3f} s/step", flush=True)
    nerfacto = run_nerfacto(args, data, args.work) if args.nerfacto else None
    if nerfacto:
        print(f"[bench_memory] nerfacto: peak RSS {nerfacto['peak_rss_mb_sampled']:,.0f} MB"
              f"{' (stopped at the cap)' if nerfacto['stopped_at_cap'] else ''}, exit {nerfacto['exit_code']}", flush=True)
    proj = projection(args, facts, mclnf, preset_timing(args.preset_timing))
    print_projection(proj)
    write_json(args.out, {"smoke": args.smoke, "command": " ".join(sys.argv), "capture": {**facts, "generation": generation,
                          "options": city_options(args)}, "mclnf_city": mclnf, "nerfacto": nerfacto, "projection": proj})
    print(f"[bench_memory] wrote {args.out}")


if __name__ == "__main__":
    main()

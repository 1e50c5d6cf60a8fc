"""CPU speed and quality: nerfacto (torch) vs mclnf-city on the same capture, same machine, same run.

    python tools/bench/speed.py                            # writes tools/bench/results/speed.json
    python tools/bench/speed.py --methods nerfacto nerfacto@1024 mclnf-city --repeats 3
    python tools/bench/speed.py --steps 0 --budget 300 --methods mclnf-city@4096 \
        --mclnf-set optimizers.fields.optimizer.lr=0.01       # one point of a preset sweep
    python tools/bench/speed.py --smoke --out /tmp/bench_speed_smoke/bench_speed.json   # seconds: the test suite runs this

Two phases, every method in its own process, one at a time (so peak RSS is its own):

1. **Equal steps, equal batch (speed).** Every method trains `--steps` steps of `--rays` rays
   (mclnf-city: the steps split evenly over its blocks). Training rays/s is the median over
   windows of `--window` steps, the first `--warmup` steps and every block's first step left
   out (block switches count in the wall time, not here). Test PSNR at equal steps is shown too.
2. **Equal wall time (quality).** Every method trains for `--budget` seconds (set-up excluded)
   with its own rays per step: nerfacto's config, the mclnf-city preset, or `METHOD@RAYS`.
   Reported: test PSNR/SSIM over every test view (every 8th image), evaluation rays/s (full
   test images rendered by the model, timed), peak RSS (the kernel's maximum resident set).

mclnf-city streams all its blocks within the budget: its steps per block come from a short
calibration stream (every block, `--calibration-steps` steps each, with the per-block
evaluations and the city report; not counted) that measures each block's step time and the
time spent outside steps, so the stream ends near the budget (`--margin` is left for timing
noise). Step times on a shared machine vary by about 10 % from one minute to the next, so the
stream can still overrun: mclnf-city therefore runs first, and nerfacto then trains for
max(budget, the time mclnf-city took). The actual training times are reported; an overrun of
the budget is flagged in the table.

Variants: `mclnf-city:reference` is mclnf-city with the fused hash-grid kernel off
(MCLNF_HASH_GRID=torch), the before of the speed-up. `nerfacto` runs as a nerfstudio user gets
it (glibc's default allocator); mclnf-city tells glibc to keep freed memory
(`mclnf_city/cpu_allocator.py`), and `nerfacto:heap` is nerfacto with that same setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from mclnf_city.trainer import preset_config, setup_trainer

from common import (ROOT, RESULTS, SMOKE_MCLNF_SAMPLES, SMOKE_NERFACTO, evaluate, nerfacto_model, nerfacto_step, parse_args,
                    parse_setting, run_logged, smoke_city, train_mclnf, write_json)

METHODS = ("nerfacto", "nerfacto:heap", "mclnf-city", "mclnf-city:reference")


def window_rates(step_seconds: List[float], rays: int, window: int, skip: set) -> List[float]:
    """Rays/s of consecutive windows of `window` steps that contain no skipped step."""
    rates, current = [], []
    for i, s in enumerate(step_seconds):
        if i in skip:
            current = []
            continue
        current.append(s)
        if len(current) == window:
            rates.append(rays * window / sum(current))
            current = []
    return rates


def worker_nerfacto(args, work: Path) -> Dict:
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes

    # The mclnf-city pipeline only lends its data manager: same pixels, same sampler.
    from nerfstudio.configs.method_configs import method_configs

    # nerfacto's own batch size unless --rays says otherwise.
    rays = args.rays or method_configs["nerfacto"].pipeline.datamanager.train_num_rays_per_batch
    pipeline = setup_trainer(preset_config("mclnf-city", args.data, work, 1, rays, prior="random")).pipeline
    model, optimizer = nerfacto_model(pipeline, seed=0, **(SMOKE_NERFACTO if args.smoke else {}))
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=pipeline, trainer=None))
    dm = pipeline.datamanager
    dm.active_block = None  # joint training: rays from every pixel
    steps, started = [], time.perf_counter()
    model.train()
    while len(steps) < args.steps if args.steps else time.perf_counter() - started < args.budget:
        t = time.perf_counter()
        nerfacto_step(model, optimizer, callbacks, dm, len(steps))
        steps.append(time.perf_counter() - t)
        if len(steps) % 10 == 0:
            print(f"nerfacto: step {len(steps)}, {time.perf_counter() - started:.0f} s", flush=True)
    train_s = time.perf_counter() - started
    return {"steps": len(steps), "rays_per_step": rays, "train_s": train_s, "step_seconds": steps, "skip": list(range(args.warmup)),
            **evaluate(model, dm.eval_dataset)}


def run_worker(args) -> None:
    torch.manual_seed(0)
    # A smoke run keeps its training runs beside its logs, so a test's temporary directory holds it all.
    work = Path(tempfile.mkdtemp(prefix=f"bench_speed_{args.worker.replace(':', '_')}_", dir=args.result.parent if args.smoke else None))
    # Every block's first step is outside the rays/s windows: a budget sized to one step per block would leave none.
    result = worker_nerfacto(args, work) if args.worker.startswith("nerfacto") else train_mclnf(args, work, min_steps_per_block=2)
    from mclnf_city import cpu_allocator

    result["allocator"] = cpu_allocator.status()
    if args.worker.startswith("mclnf"):
        from mclnf_city.hash_grid import kernel_status

        result["hash_grid"] = kernel_status()
    # Other jobs on the machine slow every number down: the 15-minute load average at the end
    # (this worker alone keeps it near the torch thread count) says whether the run was alone.
    result["load_average_15min_at_end"] = os.getloadavg()[2]
    rates = window_rates(result["step_seconds"], result["rays_per_step"], args.window, set(result["skip"]))
    if not rates:
        raise SystemExit(f"{args.worker}: no throughput window of {args.window} steps; train more steps")
    result["train_rays_per_s"] = statistics.median(rates)
    result["windows"] = len(rates)
    result["torch_threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(result))


def parse_method(entry: str):
    """'nerfacto@1024' -> ('nerfacto', 1024); 'mclnf-city' -> ('mclnf-city', 0: its own batch)."""
    method, _, rays = entry.partition("@")
    if method not in METHODS or (rays and not rays.isdigit()):
        raise argparse.ArgumentTypeError(f"{entry!r}: expected one of {', '.join(METHODS)}, optionally @RAYS")
    return entry


def run_method(args, logs: Path, method: str, rays: int, steps: int, label: str, r: int, budget: float = 0.0) -> Dict:
    """One worker process; its result with the kernel-measured peak RSS."""
    name = f"{''.join(c if c.isalnum() or c in '-.' else '_' for c in label)}_{r}"  # a file name
    result_path, log = logs / f"{name}.json", logs / f"{name}.log"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if method.endswith(":reference"):
        env["MCLNF_HASH_GRID"] = "torch"
    if method == "nerfacto":  # the data manager comes from an mclnf-city pipeline: undo its setting
        env["MCLNF_MALLOC"] = "default"
    cmd = [sys.executable, __file__, "--worker", method, "--result", str(result_path), "--data", str(args.data),
           "--budget", str(budget or args.budget), "--steps", str(steps), "--rays", str(rays), "--warmup", str(args.warmup),
           "--window", str(args.window), "--calibration-steps", str(args.calibration_steps), "--margin", str(args.margin)]
    if args.mclnf_set:
        cmd += ["--mclnf-set", *(f"{path}={value!r}" for path, value in args.mclnf_set)]
    if args.smoke:
        cmd.append("--smoke")
    result = run_logged(cmd, env, log, result_path, label)
    print(f"{label:28s} run {r}: {result['rays_per_step']} rays/step, {result['train_rays_per_s']:,.0f} train rays/s, "
          f"PSNR {result['test_psnr']:.2f} after {result['steps']} steps in {result['train_s']:.0f} s, "
          f"{result['eval_rays_per_s']:,.0f} eval rays/s, peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    return result


def print_table(title: str, summary: Dict[str, Dict], base: Optional[Dict], budget: float = 0.0) -> None:
    print(f"\n{title}")
    print(f"{'method':28s} {'rays':>5s} {'steps':>6s} {'train s':>7s} {'train rays/s':>12s} {'vs nerfacto':>11s} "
          f"{'test PSNR':>9s} {'dPSNR':>6s} {'eval rays/s':>11s} {'vs nerfacto':>11s} {'peak RSS MB':>11s}")
    for m, s in summary.items():
        ratio = f"{s['train_rays_per_s'] / base['train_rays_per_s']:10.1f}x" if base else "          -"
        eratio = f"{s['eval_rays_per_s'] / base['eval_rays_per_s']:10.1f}x" if base else "          -"
        dpsnr = f"{s['test_psnr'] - base['test_psnr']:+6.2f}" if base else "     -"
        over = f"  (over the {budget:.0f} s budget)" if budget and s["train_s"] > budget * 1.01 else ""
        print(f"{m:28s} {s['rays_per_step']:5.0f} {s['steps']:6.0f} {s['train_s']:7.0f} {s['train_rays_per_s']:12,.0f} "
              f"{ratio} {s['test_psnr']:9.2f} {dpsnr} {s['eval_rays_per_s']:11,.0f} {eratio} {s['peak_rss_mb']:11,.0f}{over}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="nerfstudio capture (default: assets/demo_city; with --smoke, a sparse 40x30 version of it, generated)")
    parser.add_argument("--methods", nargs="+", type=parse_method, default=["nerfacto", "mclnf-city"],
                        help=f"what to run, in order: {', '.join(METHODS)}; METHOD@RAYS sets the batch of the equal-wall-time phase")
    parser.add_argument("--steps", type=int, default=60, help="phase 1: training steps of every method (0: skip the phase)")
    parser.add_argument("--rays", type=int, default=4096, help="phase 1: rays per step of every method")
    parser.add_argument("--budget", type=float, default=600.0, help="phase 2: training seconds of every method (0: skip the phase)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method and phase (medians reported)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the rays/s windows")
    parser.add_argument("--window", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--calibration-steps", type=int, default=8, help="mclnf-city: steps per block of the calibration stream that sizes the budget run")
    parser.add_argument("--margin", type=float, default=0.05, help="mclnf-city: share of the budget left unplanned (step times vary by about 10%% between minutes here)")
    parser.add_argument("--mclnf-set", nargs="+", type=parse_setting, default=[], metavar="PATH=VALUE",
                        help="change the mclnf-city preset for this benchmark, e.g. optimizers.fields.optimizer.lr=0.02 pipeline.lr_final_fraction=0.03")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.json", help="JSON written here")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a sparse 40x30 city, a few steps per block, a 2 s budget: checks that the benchmark "
                             "runs (other options still override)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    # --smoke: the smoke capture and model sizes; 2 steps per block (every block's first step is outside
    # the rays/s windows), 64 rays per step in both phases.
    coarse, fine = SMOKE_MCLNF_SAMPLES
    args = parse_args(parser, methods=["nerfacto@64", "mclnf-city@64"], steps=8, rays=64, budget=2.0, warmup=1, window=1,
                      calibration_steps=2,
                      mclnf_set=[("pipeline.model.num_coarse_samples", coarse), ("pipeline.model.num_fine_samples", fine)],
                      out=Path(tempfile.gettempdir()) / "bench_speed_smoke" / "bench_speed.json")
    if args.worker:
        return run_worker(args)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench_speed_", dir=args.out.parent if args.smoke else None))
    if args.data is None and args.smoke:
        args.data = smoke_city(logs / "city_0", seed=0)
    args.data = args.data or ROOT / "assets" / "demo_city"
    # Phase 1 runs each method once (an @RAYS suffix only sets phase 2's batch).
    phase1 = list(dict.fromkeys(m.partition("@")[0] for m in args.methods)) if args.steps else []
    phase2 = args.methods if args.budget else []
    runs: Dict[str, Dict[str, List[Dict]]] = {"equal_steps": {}, "equal_wall_time": {}}
    for r in range(args.repeats):
        for method in phase1:
            result = run_method(args, logs, method, args.rays, args.steps, f"{method} ({args.steps} steps)", r)
            runs["equal_steps"].setdefault(method, []).append(result)
        # mclnf-city first: its stream is sized by calibration and may overrun the budget
        # (step times here vary by ~10 % between minutes); nerfacto then trains for the longest
        # time mclnf-city actually took, so no method gets less time than mclnf-city.
        budget = args.budget
        for entry in sorted(phase2, key=lambda e: not e.startswith("mclnf")):
            method, _, rays = entry.partition("@")
            result = run_method(args, logs, method, int(rays or 0), 0, entry, r, budget)
            if method.startswith("mclnf"):
                budget = max(budget, result["train_s"])
            runs["equal_wall_time"].setdefault(entry, []).append(result)

    keys = ("rays_per_step", "train_rays_per_s", "test_psnr", "test_ssim", "eval_rays_per_s", "peak_rss_mb", "steps", "train_s")
    summary = {phase: {m: {k: statistics.median(x[k] for x in rs) for k in keys} for m, rs in by.items()}
               for phase, by in runs.items()}
    if phase1:
        print_table(f"equal steps ({args.steps} steps of {args.rays} rays)", summary["equal_steps"],
                    summary["equal_steps"].get("nerfacto"))
    if phase2:
        print_table(f"equal wall time ({args.budget:.0f} s, each method's own rays per step)", summary["equal_wall_time"],
                    summary["equal_wall_time"].get("nerfacto"), args.budget)
    for by in runs.values():
        for rs in by.values():
            for x in rs:
                x.pop("step_seconds")  # kept in the logs' JSON, too long for the summary
    out = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "data": str(args.data), "smoke": args.smoke, "steps": args.steps,
           "rays_per_step_phase1": args.rays, "budget_s": args.budget,
           "mclnf_set": dict(args.mclnf_set), "cpu_count": os.cpu_count(),
           "summary": summary, "runs": runs}
    write_json(args.out, out)
    print(f"\nwrote {args.out} (logs in {logs})")


if __name__ == "__main__":
    main()

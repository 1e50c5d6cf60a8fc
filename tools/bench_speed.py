"""CPU speed: nerfacto (torch) vs mclnf-city on the same capture, same machine, one run.

    python tools/bench_speed.py --data assets/demo_city --budget 600 --out docs/bench_speed.json

Every method trains for the same wall-clock budget (`--budget` seconds of training, set-up
excluded), with the same rays per step, each in its own process (one at a time, so peak RSS
is its own). Reported per method:
- training rays/s: median over windows of `--window` steps, the first `--warmup` steps and
  every block's first step excluded (block switches are counted in the wall time, not here);
- test PSNR/SSIM after the budget, over every test view (every 8th image);
- evaluation rays/s: full test images rendered by the model, timed;
- peak RSS (kernel's maximum resident set size of the process).

mclnf-city streams all its blocks within the budget: its steps per block come from a short
calibration run (`--calibration-steps`, not counted), so the stream ends just before the
budget; the actual training time is reported. `mclnf-city:reference` is the same method with
the fused hash-grid kernel off (MCLNF_HASH_GRID=torch): the before of the speed-up.

`nerfacto` runs as a nerfstudio user gets it (glibc's default allocator). mclnf-city tells
glibc to keep freed memory (`mclnf_city/cpu_allocator.py`); `nerfacto:heap` is nerfacto with
that same setting, so the table shows what the setting alone gives nerfacto.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from city_runs import preset_config, setup_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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


@torch.no_grad()
def evaluate(model, dataset) -> Dict[str, float]:
    """Test PSNR / SSIM over every test view, and rendering rays/s."""
    from mclnf_city.metrics import image_metrics

    model.eval()
    per_view, pixels, seconds = [], 0, 0.0
    for i in range(len(dataset)):
        camera = dataset.cameras[i : i + 1]
        start = time.perf_counter()
        with model.for_evaluation() if hasattr(model, "for_evaluation") else contextlib.nullcontext():  # no normals
            rgb = model.get_outputs_for_camera(camera)["rgb"]
        seconds += time.perf_counter() - start
        pixels += rgb.shape[0] * rgb.shape[1]
        per_view.append(image_metrics(rgb.clamp(0, 1), dataset[i]["image"][..., :3]))
        print(f"evaluation: view {i + 1}/{len(dataset)}, {pixels / seconds:,.0f} rays/s", flush=True)
    model.train()
    return {"test_psnr": statistics.mean(m["psnr"] for m in per_view), "test_ssim": statistics.mean(m["ssim"] for m in per_view),
            "eval_rays_per_s": pixels / seconds}


def worker_nerfacto(args, work: Path) -> Dict:
    from bench_city import nerfacto_model
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    # The mclnf-city pipeline only lends its data manager: same pixels, same sampler.
    pipeline = setup_trainer(preset_config("mclnf-city", args.data, work, 1, args.rays, prior="random")).pipeline
    model, optimizer = nerfacto_model(pipeline, seed=0)
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=pipeline, trainer=None))
    dm = pipeline.datamanager
    dm.active_block = None  # joint training: rays from every pixel
    steps, started = [], time.perf_counter()
    model.train()
    while time.perf_counter() - started < args.budget:
        t = time.perf_counter()
        step = len(steps)
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        ray_bundle, batch = dm.next_train(step)
        outputs = model(ray_bundle)
        loss = sum(model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        steps.append(time.perf_counter() - t)
        if len(steps) % 10 == 0:
            print(f"nerfacto: step {len(steps)}, {time.perf_counter() - started:.0f} / {args.budget:.0f} s", flush=True)
    train_s = time.perf_counter() - started
    return {"steps": len(steps), "train_s": train_s, "step_seconds": steps, "skip": list(range(args.warmup)),
            **evaluate(model, dm.eval_dataset)}


def worker_mclnf(args, work: Path) -> Dict:
    def timed_trainer(steps_per_block: int, out: Path):
        trainer = setup_trainer(preset_config("mclnf-city", args.data, out, steps_per_block, args.rays))
        trainer.step_seconds = []
        iteration = trainer.train_iteration

        def train_iteration(step):  # nerfstudio's loop calls this once per step
            t = time.perf_counter()
            result = iteration(step)
            trainer.step_seconds.append(time.perf_counter() - t)
            return result

        trainer.train_iteration = train_iteration
        return trainer

    probe = timed_trainer(args.calibration_steps, work / "calibration")
    blocks = len(probe.pipeline.stream)
    for step in range(args.calibration_steps):
        probe.train_iteration(step)
    s_per_step = statistics.median(probe.step_seconds[2:])
    del probe
    # Per-block evaluation and the city report also run inside the budget: keep 10 % for them.
    steps_per_block = max(int(0.9 * args.budget / s_per_step / blocks), 1)
    trainer = timed_trainer(steps_per_block, work / "run")
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    skip = set(range(args.warmup)) | {b * steps_per_block for b in range(blocks)}
    return {"steps": len(trainer.step_seconds), "steps_per_block": steps_per_block, "blocks": blocks, "train_s": train_s,
            "step_seconds": trainer.step_seconds, "skip": sorted(skip), "calibrated_s_per_step": s_per_step,
            **evaluate(trainer.pipeline.model, trainer.pipeline.datamanager.eval_dataset)}


def run_worker(args) -> None:
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix=f"bench_speed_{args.worker.replace(':', '_')}_"))
    result = worker_nerfacto(args, work) if args.worker.startswith("nerfacto") else worker_mclnf(args, work)
    from mclnf_city import cpu_allocator

    result["allocator"] = cpu_allocator.status()
    if args.worker.startswith("mclnf"):
        from mclnf_city.hash_grid import kernel_status

        result["hash_grid"] = kernel_status()
    # Other jobs on the machine slow every number down: the 15-minute load average at the end
    # (this worker alone keeps it near the torch thread count) says whether the run was alone.
    result["load_average_15min_at_end"] = os.getloadavg()[2]
    rates = window_rates(result["step_seconds"], args.rays, args.window, set(result["skip"]))
    result["train_rays_per_s"] = statistics.median(rates) if rates else None
    result["windows"] = len(rates)
    result["torch_threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_city", help="nerfstudio capture")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per method")
    parser.add_argument("--rays", type=int, default=4096, help="rays per training step, every method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="what to run, in order")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method (medians reported)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the rays/s windows")
    parser.add_argument("--window", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--calibration-steps", type=int, default=8, help="mclnf-city: steps timed to size the stream")
    parser.add_argument("--out", type=Path, default=Path("bench_speed.json"), help="JSON written here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    logs = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    runs: Dict[str, List[Dict]] = {m: [] for m in args.methods}
    for r in range(args.repeats):
        for method in args.methods:
            result_path, log = logs / f"{method.replace(':', '_')}_{r}.json", logs / f"{method.replace(':', '_')}_{r}.log"
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            if method.endswith(":reference"):
                env["MCLNF_HASH_GRID"] = "torch"
            if method == "nerfacto":  # the data manager comes from an mclnf-city pipeline: undo its setting
                env["MCLNF_MALLOC"] = "default"
            cmd = [sys.executable, __file__, "--worker", method, "--result", str(result_path), "--data", str(args.data),
                   "--budget", str(args.budget), "--rays", str(args.rays), "--warmup", str(args.warmup),
                   "--window", str(args.window), "--calibration-steps", str(args.calibration_steps)]
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{method} failed, see {log}:\n{log.read_text(errors='replace')[-3000:]}")
            result = json.loads(result_path.read_text())
            result["peak_rss_mb"] = usage.ru_maxrss / 1024.0
            runs[method].append(result)
            print(f"{method:22s} run {r}: {result['train_rays_per_s']:,.0f} train rays/s, PSNR {result['test_psnr']:.2f} after "
                  f"{result['steps']} steps in {result['train_s']:.0f} s, {result['eval_rays_per_s']:,.0f} eval rays/s, "
                  f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)

    keys = ("train_rays_per_s", "test_psnr", "test_ssim", "eval_rays_per_s", "peak_rss_mb", "steps", "train_s")
    summary = {m: {k: statistics.median(x[k] for x in rs) for k in keys} for m, rs in runs.items()}
    base = summary.get("nerfacto")
    header = f"{'method':22s} {'train rays/s':>12s} {'vs nerfacto':>11s} {'test PSNR':>9s} {'dPSNR':>6s} {'eval rays/s':>11s} {'vs nerfacto':>11s} {'peak RSS MB':>11s}"
    print("\n" + header)
    for m, s in summary.items():
        ratio = f"{s['train_rays_per_s'] / base['train_rays_per_s']:10.1f}x" if base else "          -"
        eratio = f"{s['eval_rays_per_s'] / base['eval_rays_per_s']:10.1f}x" if base else "          -"
        dpsnr = f"{s['test_psnr'] - base['test_psnr']:+6.2f}" if base else "     -"
        print(f"{m:22s} {s['train_rays_per_s']:12,.0f} {ratio} {s['test_psnr']:9.2f} {dpsnr} {s['eval_rays_per_s']:11,.0f} {eratio} {s['peak_rss_mb']:11,.0f}")
    for rs in runs.values():
        for x in rs:
            x.pop("step_seconds")  # kept in the logs' JSON, too long for the summary
    out = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "data": str(args.data), "budget_s": args.budget,
           "rays_per_step": args.rays, "cpu_count": os.cpu_count(), "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out} (logs in {logs})")


if __name__ == "__main__":
    main()

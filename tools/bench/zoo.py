"""mclnf-city against nerfacto on a zoo of captures, at equal wall time, same machine, same run.

    python tools/bench/zoo.py --budget 600 \\
        --real lund_door=/data/lund_door_capture lund_street=/data/lund_street_capture   # writes tools/bench/results/zoo/
    python tools/bench/zoo.py --captures oblique_serpentine orbit_tower --budget 180 --seeds 0 1 2
    python tools/bench/zoo.py --split validation ...     # for choosing defaults: never the test views
    python tools/bench/zoo.py --smoke                      # seconds: the test suite runs this

Captures: the zoo of `mclnf_city.scenes.zoo` (generated into `--work`, `--width`x`--height`,
`--frames` frames) and real captures given as NAME=PATH (nerfstudio captures, e.g. made by
`mclnf-process`). Both methods parse them with nerfstudio-data, every 8th image a test view.

Splits: `--split test` trains on every non-test image and reports the test views.
`--split validation` drops the test images from the capture altogether (a derived capture
of links) and evaluates on every 8th of the rest: tuning runs see no test view at all.

Methods, each in its own process, one at a time:
- `mclnf-city`: the preset as shipped (`ns-train mclnf-city`), its steps per block sized by a
  short calibration stream so the stream ends near the budget (the speed benchmark's worker).
- `nerfacto`: nerfstudio's `nerfacto` method config as shipped (its data manager, batch,
  optimizers, schedulers and camera optimizer), `implementation torch`, run by nerfstudio's
  own Trainer for max(budget, the time mclnf-city took); LPIPS is off when its weights are
  not on disk (tools/bench/ns_train_offline.py).
Both are evaluated by the same function on the same views (PSNR/SSIM, full images), and the
renders of one test view are saved side by side with the photo.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from mclnf_city.scenes.zoo import ZOO, generate_scene
from mclnf_city.splits import TEST_INTERVAL, validation_capture

from common import RESULTS, evaluate, parse_setting, patch_lpips, run_logged, train_mclnf

METHODS = ("mclnf-city", "nerfacto")


# ----------------------------------------------------------------------------- captures
def prepare_captures(args) -> Dict[str, Path]:
    captures: Dict[str, Path] = {}
    for name in args.captures:
        target = args.work / f"{name}_{args.width}x{args.height}x{args.frames}"
        if not (target / "transforms.json").exists():
            print(f"generating {name} -> {target}", flush=True)
            generate_scene(target, name, seed=args.scene_seed, width=args.width, height=args.height, frames=args.frames, overwrite=True)
        captures[name] = target
    for entry in args.real:
        name, _, path = entry.partition("=")
        if not (Path(path) / "transforms.json").exists():
            raise SystemExit(f"--real {entry}: {path}/transforms.json not found")
        captures[name] = Path(path)
    if args.split == "validation":
        captures = {n: validation_capture(c, args.work / "validation" / n) for n, c in captures.items()}
    return captures


# ----------------------------------------------------------------------------- workers
def worker_nerfacto(data: Path, budget: float, seed: int, work: Path, render_dir: Path) -> Dict:
    """nerfacto as shipped (implementation torch), trained by nerfstudio's Trainer for `budget` seconds."""
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    patch_lpips()
    config = copy.deepcopy(method_configs["nerfacto"])
    config.data = data
    config.pipeline.datamanager.data = data
    # Only the split is set, to mclnf-city's: the same test views for both methods.
    config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig(eval_mode="interval", eval_interval=TEST_INTERVAL)
    config.pipeline.model.implementation = "torch"
    config.machine.device_type, config.machine.seed = "cpu", seed
    config.vis, config.output_dir = "tensorboard", work
    config.steps_per_save = config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    def train_step(step: int) -> None:  # one iteration of nerfstudio's Trainer.train loop
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)

    # The first step waits for the data manager's worker processes to start and load the
    # images: set-up, not training, so the budget starts after it (in nerfacto's favour).
    first = time.perf_counter()
    train_step(0)
    step, started = 1, time.perf_counter()
    first_step_s = started - first
    while time.perf_counter() - started < budget:
        train_step(step)
        step += 1
        if step % 10 == 0:
            print(f"nerfacto: step {step}, {time.perf_counter() - started:.0f} s", flush=True)
    train_s = time.perf_counter() - started
    rays = trainer.pipeline.datamanager.config.train_num_rays_per_batch
    return {"steps": step, "rays_per_step": rays, "train_s": train_s, "first_step_s": first_step_s,
            **evaluate(trainer.pipeline.model, trainer.pipeline.datamanager.eval_dataset, render_dir)}


def worker_mclnf(data: Path, budget: float, seed: int, work: Path, render_dir: Path, calibration_steps: int, settings: List,
                 steps_per_block: int = 0) -> Dict:
    """The mclnf-city preset as shipped, its stream sized to `budget` (the speed benchmark's calibrated
    worker), or `steps_per_block` steps per block when given."""
    args = argparse.Namespace(data=data, rays=0, steps=0, budget=budget, margin=0.05, warmup=3, calibration_steps=calibration_steps,
                              mclnf_set=[("pipeline.datamanager.seed", seed), *settings], render_dir=render_dir,
                              steps_per_block=steps_per_block)
    return train_mclnf(args, work)


def run_worker(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"bench_zoo_{args.worker}_"))
    try:
        if args.worker == "nerfacto":
            result = worker_nerfacto(args.data, args.budget, args.seed, work, args.render_dir)
        else:
            result = worker_mclnf(args.data, args.budget, args.seed, work, args.render_dir, args.calibration_steps, args.mclnf_set,
                                  args.steps_per_block)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.pop("step_seconds", None)
    result["load_average_15min_at_end"] = os.getloadavg()[2]
    Path(args.result).write_text(json.dumps(result))


def run_method(args, logs: Path, capture: str, data: Path, method: str, seed: int, budget: float) -> Dict:
    """One worker process; its result with the kernel-measured peak RSS."""
    label = f"{capture}_{method}_seed{seed}"
    result_path, log = logs / f"{label}.json", logs / f"{label}.log"
    render_dir = args.out / "renders" / label
    cmd = [sys.executable, __file__, "--worker", method, "--result", str(result_path), "--data", str(data), "--budget", str(budget),
           "--seed", str(seed), "--render-dir", str(render_dir), "--calibration-steps", str(args.calibration_steps),
           "--steps-per-block", str(args.steps_per_block)]
    if args.mclnf_set:
        cmd += ["--mclnf-set", *(f"{path}={value!r}" for path, value in args.mclnf_set)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if method == "nerfacto":
        env["MCLNF_MALLOC"] = "default"  # nerfacto as a nerfstudio user gets it
    result = run_logged(cmd, env, log, result_path, label)
    result.update(capture=capture, method=method, seed=seed, render_dir=str(render_dir))
    colour = f" colour error {result['test_colour_error_worst']:.1%}" if "test_colour_error_worst" in result else ""
    print(f"{capture:24s} {method:10s} seed {seed}: PSNR {result['test_psnr']:.2f} SSIM {result['test_ssim']:.3f}{colour} "
          f"after {result['steps']} steps in {result['train_s']:.0f} s", flush=True)
    return result


# ----------------------------------------------------------------------------- report
def summarise(runs: List[Dict]) -> Dict[str, Dict[str, Dict]]:
    """capture -> method -> mean / min / max of PSNR and SSIM over seeds, and the seeds."""
    table: Dict[str, Dict[str, Dict]] = {}
    for r in runs:
        table.setdefault(r["capture"], {}).setdefault(r["method"], {"runs": []})["runs"].append(r)
    for by_method in table.values():
        for s in by_method.values():
            rs = s.pop("runs")
            for key in ("test_psnr", "test_ssim", "train_s", "steps", "test_colour_error_worst"):
                if not all(key in r for r in rs):  # results from before the colour error was measured
                    continue
                values = [r[key] for r in rs]
                s[key] = statistics.mean(values)
                s[f"{key}_min"], s[f"{key}_max"] = min(values), max(values)
            s["seeds"] = [r["seed"] for r in rs]
    return table


def markdown(table: Dict[str, Dict[str, Dict]], split: str) -> str:
    views = "test" if split == "test" else "validation"
    lines = [f"| capture | mclnf-city {views} PSNR | SSIM | nerfacto {views} PSNR | SSIM | Δ PSNR | seeds | train s (mclnf / nerfacto) "
             "| worst colour error (mclnf / nerfacto) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    deltas = []
    for capture, by in table.items():
        m, n = by.get("mclnf-city"), by.get("nerfacto")
        spread = lambda s: f" ({s['test_psnr_min']:.2f}–{s['test_psnr_max']:.2f})" if len(s["seeds"]) > 1 else ""  # noqa: E731
        cell = lambda s, k: f"{s[k]:.2f}" if k == "test_psnr" else f"{s[k]:.3f}"  # noqa: E731
        colour = lambda s: f"{s['test_colour_error_worst_max']:.1%}" if s and "test_colour_error_worst" in s else "-"  # noqa: E731
        delta = m["test_psnr"] - n["test_psnr"] if m and n else None
        if delta is not None:
            deltas.append(delta)
        lines.append(
            f"| {capture} | {cell(m, 'test_psnr') + spread(m) if m else '-'} | {cell(m, 'test_ssim') if m else '-'} | "
            f"{cell(n, 'test_psnr') if n else '-'} | {cell(n, 'test_ssim') if n else '-'} | "
            f"{'' if delta is None else f'{delta:+.2f}'} | {len(m['seeds']) if m else 0} | "
            f"{m['train_s'] if m else 0:.0f} / {n['train_s'] if n else 0:.0f} | {colour(m)} / {colour(n)} |"
        )
    if deltas:
        lines.append(f"| **mean** | | | | | **{statistics.mean(deltas):+.2f}** | | | |")
    return "\n".join(lines) + "\n"


def renders_picture(runs: List[Dict], out: Path) -> None:
    """One row per capture: photo | mclnf-city | nerfacto, test view 0 of seed 0 (or the first seed run)."""
    from PIL import Image, ImageDraw

    rows = []
    for capture in dict.fromkeys(r["capture"] for r in runs):
        by = {r["method"]: r for r in runs if r["capture"] == capture and r["seed"] == min(x["seed"] for x in runs if x["capture"] == capture)}
        first = next(iter(by.values()))
        tiles = [Image.open(Path(first["render_dir"]) / "view_000_gt.png")]
        for method in METHODS:
            if method in by:
                tiles.append(Image.open(Path(by[method]["render_dir"]) / "view_000.png"))
        h = 160
        tiles = [t.resize((max(1, round(t.width * h / t.height)), h)) for t in tiles]
        row = Image.new("RGB", (sum(t.width for t in tiles) + 150, h), "white")
        ImageDraw.Draw(row).text((4, h // 2), capture, fill="black")
        x = 150
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width
        rows.append(row)
    if not rows:
        return
    header = Image.new("RGB", (max(r.width for r in rows), 20), "white")
    ImageDraw.Draw(header).text((154, 4), "photo | mclnf-city | nerfacto (test view 0, equal wall time)", fill="black")
    sheet = Image.new("RGB", (header.width, 20 + sum(r.height for r in rows)), "white")
    sheet.paste(header, (0, 0))
    y = 20
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    sheet.save(out, quality=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captures", nargs="*", default=None, help=f"zoo captures (default: all of {', '.join(ZOO)})")
    p.add_argument("--real", nargs="*", default=[], metavar="NAME=PATH", help="real (or other) nerfstudio captures")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--budget", type=float, default=600.0, help="training seconds of every method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="mclnf-city seeds (ray draws); nerfacto runs the first")
    p.add_argument("--nerfacto-seeds", nargs="+", type=int, default=None, help="nerfacto seeds (default: the first of --seeds)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the generated scenes")
    p.add_argument("--calibration-steps", type=int, default=8, help="mclnf-city: steps per block of the calibration stream")
    p.add_argument("--steps-per-block", type=int, default=0,
                   help="mclnf-city: train this many steps per block instead of filling the budget (equal-steps comparisons, e.g. of priors)")
    p.add_argument("--mclnf-set", nargs="+", type=parse_setting, default=[], metavar="PATH=VALUE", help="change the mclnf-city preset")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_zoo_captures", help="generated captures are cached here")
    p.add_argument("--out", type=Path, default=RESULTS / "zoo", help="results.json, results.md, renders.jpg and renders/ go here")
    p.add_argument("--append", action="store_true",
                   help="keep the runs already in OUT/results.json (e.g. more seeds on some captures) and add these; a run of the same capture, method and seed is replaced")
    p.add_argument("--smoke", action="store_true", help="a few seconds on one tiny capture: checks that the benchmark runs")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--render-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.smoke:
        args.captures = args.captures or ["orbit_tower"]
        args.width, args.height, args.frames, args.budget, args.calibration_steps = 48, 36, 17, 6.0, 2
    elif args.captures is None:
        args.captures = list(ZOO)
    unknown = [c for c in args.captures if c not in ZOO]
    if unknown:
        p.error(f"unknown zoo capture(s) {unknown}; the zoo: {', '.join(ZOO)}")
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    captures = prepare_captures(args)
    runs: List[Dict] = []
    commands = [" ".join(sys.argv)]
    if args.append and (args.out / "results.json").exists():
        earlier = json.loads((args.out / "results.json").read_text())
        if earlier.get("split", "test") != args.split:
            p.error(f"--append: {args.out}/results.json holds {earlier.get('split')} runs, not {args.split}")
        fresh = {(c, m, s) for c in captures for m in args.methods for s in args.seeds}
        runs = [r for r in earlier["runs"] if (r["capture"], r["method"], r["seed"]) not in fresh]
        commands = earlier.get("commands", [earlier.get("command", "")]) + commands
    for name, data in captures.items():
        for seed in args.seeds:
            budget = args.budget
            if "mclnf-city" in args.methods:
                r = run_method(args, logs, name, data, "mclnf-city", seed, budget)
                budget = max(budget, r["train_s"])  # nerfacto never gets less time than mclnf-city took
                runs.append(r)
            if "nerfacto" in args.methods and seed in (args.nerfacto_seeds or args.seeds[:1]):
                runs.append(run_method(args, logs, name, data, "nerfacto", seed, budget))
            (args.out / "results.json").write_text(json.dumps({"commands": commands, "split": args.split, "runs": runs}, indent=1))
    table = summarise(runs)
    text = markdown(table, args.split)
    print("\n" + text)
    shown = "\n".join(f"`python tools/bench/zoo.py {c.split(' ', 1)[1] if ' ' in c else ''}`" for c in commands)
    (args.out / "results.md").write_text(f"{shown}\n\n{text}")
    (args.out / "results.json").write_text(json.dumps({"commands": commands, "split": args.split, "summary": table, "runs": runs}, indent=1))
    renders_picture(runs, args.out / "renders.jpg")
    print(f"wrote {args.out}/results.md, results.json, renders.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())

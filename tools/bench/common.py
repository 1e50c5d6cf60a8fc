"""What the benchmarks share: where results go, --smoke parsing and the smoke runs' capture and
model sizes, nerfacto beside mclnf-city, the mclnf-city run sized to a time budget, evaluation
of the test views, and worker processes with their peak memory.

The benchmarks run as scripts (`python tools/bench/<name>.py`), so this folder is on sys.path
and they import this module as `common`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from mclnf_city.scenes.make_city import generate_city
from mclnf_city.scenes.options import STANDARD_CITY
from mclnf_city.trainer import preset_config, setup_trainer

# The runner stays free of the benchmarks' imports, so a nerfacto baseline run through it
# measures nerfacto's own memory: its LPIPS patch is shared from there.
from ns_train_offline import patch_lpips

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
"""Every benchmark writes here unless told otherwise; README.md beside it is the measurements page."""

# --smoke: rendering the test views (nerfacto's above all) is most of a smoke run, so the standard city at
# 40x30 from a sparse drone flight (15 images instead of 119: 2 test views) and fewer samples per ray:
# mclnf-city's coarse and fine, nerfacto's two proposal passes and its final one.
SMOKE_CITY = dict(image_width=40, image_height=30, drone_line_spacing=60.0, drone_step=40.0, street_paths="none")
SMOKE_MCLNF_SAMPLES = (8, 8)
SMOKE_NERFACTO = dict(num_proposal_samples_per_ray=(32, 16), num_nerf_samples_per_ray=16)


def smoke_city(out: Path, seed: int) -> Path:
    """The benchmarks' generated city (`STANDARD_CITY`), at smoke size."""
    return generate_city(out, seed=seed, style="downtown", progress=False, verbose=False, **{**STANDARD_CITY, **SMOKE_CITY})


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None, **smoke: object) -> argparse.Namespace:
    """The command line; with --smoke, parsed again over the smoke run's defaults `smoke`, so any
    option given still wins (and a smoke run never writes the results folder unless asked to)."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def default_data_dir() -> Path:
    """/work/shared/data, or ../shared/data beside the main checkout."""
    for candidate in (Path("/work/shared/data"), ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/data")


def downscaled_capture(src: Path, dst: Path, max_size: int) -> Path:
    """A copy of the nerfstudio capture `src` in `dst` with every image's long side at most
    `max_size` (downscaled as `mclnf-process --max-size` does) and the intrinsics scaled to match;
    other files are linked. Made once: an existing `dst/transforms.json` is reused."""
    import shutil

    from mclnf_city.capture.images import prepare_images

    if (dst / "transforms.json").is_file():
        return dst
    meta = json.loads((src / "transforms.json").read_text())
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    folders: Dict[str, List[Path]] = {}
    for frame in meta["frames"]:
        folders.setdefault(str(Path(frame["file_path"]).parent), []).append(src / frame["file_path"])
    sizes = {folder: prepare_images(paths, tmp / folder, max_size) for folder, paths in folders.items()}

    def scale_intrinsics(entry: Dict, w: int, h: int) -> None:
        if "w" in entry:
            sx, sy = w / entry["w"], h / entry["h"]
            entry.update(w=w, h=h, fl_x=entry["fl_x"] * sx, fl_y=entry["fl_y"] * sy, cx=entry["cx"] * sx, cy=entry["cy"] * sy)

    for frame in meta["frames"]:
        path = Path(frame["file_path"])
        w, h = sizes[str(path.parent)][path.name]
        scale_intrinsics(frame, w, h)
        scale_intrinsics(meta, w, h)  # shared intrinsics: every image has the same size
    for extra in src.iterdir():
        if extra.name != "transforms.json" and extra.is_file():
            (tmp / extra.name).symlink_to(extra.resolve())
    (tmp / "transforms.json").write_text(json.dumps(meta, indent=1))
    tmp.rename(dst)
    return dst


def nerfacto_model(pipeline, seed: int, **sizes):
    """nerfacto (torch, camera optimiser off) for the pipeline's data; `sizes` override fields of its
    model config (smoke runs)."""
    from nerfstudio.configs.method_configs import method_configs

    patch_lpips()
    config = copy.deepcopy(method_configs["nerfacto"].pipeline.model)
    config.implementation = "torch"
    config.camera_optimizer.mode = "off"
    for key, value in sizes.items():
        if not hasattr(config, key):
            raise AttributeError(f"nerfacto's model config has no field {key!r}")
        setattr(config, key, value)
    dataset = pipeline.datamanager.train_dataset
    torch.manual_seed(seed)
    model = config.setup(scene_box=dataset.scene_box, num_train_data=len(dataset), metadata=dataset.metadata, device="cpu")
    groups = model.get_param_groups()
    optimizer = torch.optim.Adam([p for ps in groups.values() for p in ps], lr=1e-2, eps=1e-15)
    return model, optimizer


def nerfacto_step(model, optimizer, callbacks, datamanager, step: int) -> None:
    """One nerfacto training step on the data manager's next batch, with nerfacto's callbacks around it."""
    for cb in callbacks:
        cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    ray_bundle, batch = datamanager.next_train(step)
    outputs = model(ray_bundle)
    metrics = model.get_metrics_dict(outputs, batch)
    loss = sum(model.get_loss_dict(outputs, batch, metrics).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for cb in callbacks:
        cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


@torch.no_grad()
def evaluate(model, dataset, render_dir: Optional[Path] = None) -> Dict[str, float]:
    """Test PSNR / SSIM over every test view, the mean-colour error of each view and the worst
    (`metrics.colour_error`), and rendering rays/s; with `render_dir`, the renders
    (view_000.png, ...) and the photos (view_000_gt.png, ...) are saved there."""
    from PIL import Image

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
        gt = dataset[i]["image"][..., :3]
        per_view.append(image_metrics(rgb.clamp(0, 1), gt))
        if render_dir is not None:
            Path(render_dir).mkdir(parents=True, exist_ok=True)
            for image, suffix in ((rgb, ""), (gt, "_gt")):
                Image.fromarray((image.clamp(0, 1) * 255).round().byte().cpu().numpy()).save(Path(render_dir) / f"view_{i:03d}{suffix}.png")
        print(f"evaluation: view {i + 1}/{len(dataset)}, {pixels / seconds:,.0f} rays/s", flush=True)
    model.train()
    return {"test_psnr": statistics.mean(m["psnr"] for m in per_view), "test_ssim": statistics.mean(m["ssim"] for m in per_view),
            "test_colour_error_worst": max(m["colour_error"] for m in per_view),
            "test_colour_errors": [m["colour_error"] for m in per_view], "eval_rays_per_s": pixels / seconds}


def train_mclnf(args, work: Path, min_steps_per_block: int = 1) -> Dict:
    """The mclnf-city preset trained and evaluated: `args.steps_per_block` steps per block when given, else
    `args.steps` split evenly over the blocks, else steps per block sized by a calibration stream so the
    stream ends near `args.budget` seconds."""

    def timed_trainer(steps_per_block: int, out: Path):
        config = preset_config("mclnf-city", args.data, out, steps_per_block, args.rays or None)
        for path, value in args.mclnf_set:
            set_config(config, path, value)
        trainer = setup_trainer(config)
        trainer.step_seconds = []
        iteration = trainer.train_iteration

        def train_iteration(step):  # nerfstudio's loop calls this once per step
            t = time.perf_counter()
            result = iteration(step)
            trainer.step_seconds.append(time.perf_counter() - t)
            return result

        trainer.train_iteration = train_iteration
        return trainer

    if getattr(args, "steps_per_block", 0):  # fixed steps per block
        steps_per_block, calibration = args.steps_per_block, {}
        blocks = len(timed_trainer(1, work / "count").pipeline.stream)
    elif args.steps:  # equal steps: the stream's steps split evenly over its blocks
        blocks = len(timed_trainer(1, work / "count").pipeline.stream)
        steps_per_block, calibration = max(args.steps // blocks, 1), {}
    else:
        # Calibration: the whole stream at a few steps per block, run as the real one (block
        # switches, per-block evaluation, the city report), so both the cost of a step in each
        # block and the fixed cost outside steps are measured. Not counted in the budget.
        k = args.calibration_steps
        probe = timed_trainer(k, work / "calibration")
        blocks = len(probe.pipeline.stream)
        started = time.perf_counter()
        probe.train()
        overhead_s = time.perf_counter() - started - sum(probe.step_seconds)
        # Each block's median step, leaving out its first step (a block switch) and the first 2
        # steps of the run (warm-up).
        steps = probe.step_seconds
        per_block = [statistics.median(steps[max(b * k + 1, 2) : (b + 1) * k] or steps[b * k : (b + 1) * k]) for b in range(blocks)]
        del probe
        steps_per_block = max(int((args.budget * (1 - args.margin) - overhead_s) / sum(per_block)), min_steps_per_block)
        calibration = {"calibrated_s_per_step": per_block, "calibrated_overhead_s": overhead_s}
    trainer = timed_trainer(steps_per_block, work / "run")
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    skip = set(range(args.warmup)) | {b * steps_per_block for b in range(blocks)}
    rays = trainer.pipeline.datamanager.config.train_num_rays_per_batch
    return {"steps": len(trainer.step_seconds), "rays_per_step": rays, "steps_per_block": steps_per_block, "blocks": blocks, "train_s": train_s,
            "step_seconds": trainer.step_seconds, "skip": sorted(skip), **calibration,
            **evaluate(trainer.pipeline.model, trainer.pipeline.datamanager.eval_dataset, getattr(args, "render_dir", None))}


def parse_setting(text: str):
    """'optimizers.fields.optimizer.lr=0.02' -> ('optimizers.fields.optimizer.lr', 0.02)."""
    path, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH=VALUE")
    try:
        return path, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return path, value  # a plain string


def set_config(config, path: str, value) -> None:
    """Set a dotted path of a trainer config; dict keys and attributes both work, and the
    attribute must exist (a typo fails instead of silently doing nothing)."""
    *parents, last = path.split(".")
    for part in parents:
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    if isinstance(config, dict):
        config[last] = value
    elif hasattr(config, last):
        setattr(config, last, value)
    else:
        raise SystemExit(f"--mclnf-set {path}: {type(config).__name__} has no field {last!r}")


def run_to_log(cmd: List, env: Dict[str, str], log: Path) -> Tuple[int, object]:
    """Run a process with its output in `log`; its wait status and resource usage (peak RSS: `ru_maxrss`)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return status, usage


def run_logged(cmd: List[str], env: Dict[str, str], log: Path, result_path: Path, label: str) -> Dict:
    """Run a worker process with its output in `log`; its JSON result with the kernel-measured peak RSS."""
    status, usage = run_to_log(cmd, env, log)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed, see {log}:\n{log.read_text(errors='replace')[-3000:]}")
    result = json.loads(result_path.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    return result

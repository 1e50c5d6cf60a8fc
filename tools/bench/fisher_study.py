"""FIM-NeRF variants against plain training, at equal wall time, on validation views.

    python tools/bench/fisher_study.py --captures oblique_serpentine street_walk \\
        --real lund_door=/data/lund_door_capture lund_street=/data/lund_street_capture \\
        --seeds 0 1 2 --budgets 300 600 --out tools/bench/results/fisher
    python tools/bench/fisher_study.py --heatmap lund_door=/data/lund_door_capture --heatmap-steps 300
    python tools/bench/fisher_study.py --list           # the variants and their settings
    python tools/bench/fisher_study.py --smoke          # seconds: the test suite runs this

Every run is one `tools/bench/zoo.py` run of the `mclnf-city` preset with `--split validation`
(the test images are removed from the capture; every 8th remaining image is a validation view)
and a training budget in seconds: a calibration stream sizes the steps per block of each
variant to fill the budget, so what FIM-NeRF costs per step is paid in steps. The variants
differ only in `--pipeline.fisher.*` (see mclnf_city/fisher.py for what each does).
`--resume` keeps the runs already in `--out/results.json` (a stopped study loses nothing).

Timed runs need an idle machine. `--steps-from TIMED/results.json --steps-like V` trains each
capture the steps per block that variant V reached in a timed study instead (one thread per
run, `--jobs` at once): `--steps-like off` asks what FIM-NeRF would give if it cost nothing;
`--steps-like sampling` is equal wall time for the sampling variants, which share its cost;
`--steps-like own --steps-scale K` is equal wall time at K times the timed budget (each variant
at the steps it reached, times K): longer schedules without an idle machine.

    python tools/bench/fisher_study.py ... --steps-from TIMED/results.json --steps-like sampling \
        --variants off sampling_u0.8 sampling_decay --seeds 0 --jobs 2 --out OTHER_DIR

`--prior NAME=PATH` adds a variant `prior_NAME`: FIM-NeRF off, every block starting from that
θ_shared file. With priors meta-learned by `tools/train_prior.py` with and without
`--fisher-weighting` (Fisher-weighted rays in the meta-learning's inner loop), a short untimed
schedule measures how fast each prior adapts to the blocks of captures it never saw:

    python tools/bench/fisher_study.py ... --prior plain=PLAIN.pt fisher=FISHER.pt \
        --variants prior_plain prior_fisher --baseline prior_plain \
        --steps-from TIMED/results.json --steps-like off --steps-scale 0.25 --jobs 2

`--heatmap NAME=PATH` trains the first block of a capture with FIM-NeRF sampling (the
`mclnf-city` preset, in this process) and draws the score of every pixel of the block's
photo with the most pixels over that photo (score_heatmap.jpg: photo | score | overlay).

The verdict rule: a variant wins when its mean gain over `off` (per capture, mean over seeds,
then mean over captures) is >= +0.3 dB at the largest budget and no capture loses more than
0.2 dB. Output: results.json (every run), results.md (the table and the verdict) and
psnr_vs_time.png (validation PSNR against the budget, per variant and capture).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common import RESULTS, downscaled_capture

HERE = Path(__file__).resolve().parent
SAMPLING = ["pipeline.fisher.sampling=True"]
VARIANTS: Dict[str, List[str]] = {
    "off": [],
    "weighting": ["pipeline.fisher.loss_weighting=True"],
    "sampling": SAMPLING,
    "both": ["pipeline.fisher.loss_weighting=True", *SAMPLING],
    "sampling_corrected": [*SAMPLING, "pipeline.fisher.importance_correction=True", "pipeline.fisher.weight_range=(0.25,4.0)"],
    "sampling_decay": [*SAMPLING, "pipeline.fisher.score_decay=0.99"],
    "sampling_patch": [*SAMPLING, "pipeline.fisher.granularity='patch'"],
    "sampling_image": [*SAMPLING, "pipeline.fisher.granularity='image'"],
    "sampling_u0.2": [*SAMPLING, "pipeline.fisher.uniform_fraction=0.2"],
    "sampling_u0.8": [*SAMPLING, "pipeline.fisher.uniform_fraction=0.8"],
    "weighting_wide": ["pipeline.fisher.loss_weighting=True", "pipeline.fisher.weight_range=(0.25,4.0)"],
}
WIN_MEAN_DB, WORST_CAPTURE_DB = 0.3, -0.2


def run_variant(args, variant: str, budget: float, seed: int, out: Path, captures: Optional[List[str]] = None,
                real: Optional[List[str]] = None, steps_per_block: int = 0) -> List[Dict]:
    """One zoo.py run of a variant at a budget and seed (every capture unless given); its runs.
    With `steps_per_block`, that many steps per block instead of filling the budget (one thread)."""
    captures = args.captures if captures is None else captures
    real = real_captures(args) if real is None else real
    cmd = [sys.executable, str(HERE / "zoo.py"), "--methods", "mclnf-city", "--split", "validation", "--budget", str(budget),
           "--seeds", str(seed), "--work", str(args.work), "--out", str(out), "--captures", *captures]
    for flag in ("width", "height", "frames"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if real:
        cmd += ["--real", *real]
    if args.smoke:
        cmd += ["--smoke"]
    if steps_per_block:
        cmd += ["--steps-per-block", str(steps_per_block)]
    if VARIANTS[variant] or args.mclnf_set:
        cmd += ["--mclnf-set", *VARIANTS[variant], *args.mclnf_set]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if steps_per_block else None
    what = f"{steps_per_block} steps per block" if steps_per_block else f"{budget:g} s"
    print(f"== {variant} at {what}, seed {seed}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True, env=env)
    (out / "study.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "study.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} at {what} failed, see {out / 'study.log'}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    for r in runs:
        r.update(variant=variant, budget=budget)
    return runs


def steps_like(timed: Path, like: str, scale: float = 1.0) -> Tuple[float, Dict[str, int]]:
    """From a timed study's results.json: its largest budget, and per capture `scale` times the steps
    per block that variant `like` reached at it (mean over seeds)."""
    runs = json.loads(timed.read_text())["runs"]
    budget = max(float(r["budget"]) for r in runs)
    steps: Dict[str, List[int]] = {}
    for r in runs:
        if r["variant"] == like and float(r["budget"]) == budget:
            steps.setdefault(r["capture"], []).append(r["steps_per_block"])
    if not steps:
        raise SystemExit(f"--steps-from {timed}: no run of variant {like!r} at {budget:g} s")
    return budget * scale, {c: max(1, round(scale * statistics.mean(v))) for c, v in steps.items()}


def run_at_steps(args, variant: str, seed: int) -> List[Dict]:
    """Every capture of one variant and seed at the steps per block of `--steps-like` in the timed
    study `--steps-from`: equal wall time for variants of the same cost per step, without timing
    (so `--jobs` runs may share the machine)."""
    budget, steps = steps_like(args.steps_from, variant if args.steps_like == "own" else args.steps_like, args.steps_scale)
    real = dict(e.partition("=")[::2] for e in real_captures(args))
    jobs = [(c, [c], []) for c in args.captures] + [(n, [], [f"{n}={p}"]) for n, p in real.items()]
    missing = [name for name, _, _ in jobs if name not in steps]
    if missing:
        raise SystemExit(f"--steps-from {args.steps_from}: no {args.steps_like!r} run of {', '.join(missing)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        parts = pool.map(lambda job: run_variant(args, variant, budget, seed, args.out / "runs" / f"{variant}_seed{seed}_{job[0]}",
                                                 job[1], job[2], steps[job[0]]), jobs)
        runs = [r for part in parts for r in part]
    for r in runs:
        r["steps_like"] = args.steps_like
    return runs


def real_captures(args) -> List[str]:
    """--real NAME=PATH entries, pointing at copies with images of long side --real-max-size when set."""
    if not args.real_max_size:
        return list(args.real)
    entries = []
    for entry in args.real:
        name, _, path = entry.partition("=")
        small = downscaled_capture(Path(path), args.work / "real" / f"{name}_max{args.real_max_size}", args.real_max_size)
        entries.append(f"{name}={small}")
    return entries


def table(runs: List[Dict]) -> Dict:
    """budget -> variant -> capture -> {psnr: mean over seeds, seeds: [...], steps, train_s}."""
    out: Dict = {}
    for r in runs:
        cell = out.setdefault(str(r["budget"]), {}).setdefault(r["variant"], {}).setdefault(r["capture"], {"runs": []})
        cell["runs"].append(r)
    for by_variant in out.values():
        for by_capture in by_variant.values():
            for cell in by_capture.values():
                rs = cell.pop("runs")
                cell.update(psnr=statistics.mean(r["test_psnr"] for r in rs), ssim=statistics.mean(r["test_ssim"] for r in rs),
                            psnr_per_seed={r["seed"]: r["test_psnr"] for r in rs},
                            steps=statistics.mean(r["steps"] for r in rs), train_s=statistics.mean(r["train_s"] for r in rs))
    return out


def verdict(summary: Dict, baseline: str = "off") -> Dict[str, Dict]:
    """Per variant at the largest budget: gain over `baseline` per capture, its mean, and whether it wins."""
    budget = max(summary, key=float)
    base = summary[budget].get(baseline)
    result = {}
    for variant, by_capture in summary[budget].items():
        if variant == baseline or base is None:
            continue
        gains = {c: by_capture[c]["psnr"] - base[c]["psnr"] for c in by_capture if c in base}
        mean = statistics.mean(gains.values())
        result[variant] = {"gain_db": gains, "mean_gain_db": mean,
                           "wins": mean >= WIN_MEAN_DB and min(gains.values()) >= WORST_CAPTURE_DB}
    return result


def markdown(summary: Dict, verdicts: Dict[str, Dict], commands: List[str], steps_like: Optional[str] = None,
             baseline: str = "off") -> str:
    lines = [f"`python tools/bench/fisher_study.py {' '.join(commands)}`", ""]
    for budget, by_variant in sorted(summary.items(), key=lambda kv: float(kv[0])):
        captures = sorted({c for by_capture in by_variant.values() for c in by_capture})
        schedule = f"the steps per block `{steps_like}` reached in {float(budget):g} s" if steps_like else f"{float(budget):g} s of training"
        if steps_like == "own":
            schedule = f"equal wall time of about {float(budget):g} s (each variant at its steps per block of the timed study, scaled)"
        lines += [f"### {schedule}, validation PSNR (mean over seeds; per seed in brackets)", "",
                  "| variant | " + " | ".join(captures) + " | mean |", "| --- |" + " ---: |" * (len(captures) + 1)]
        for variant, by_capture in by_variant.items():
            cells = []
            for c in captures:
                cell = by_capture.get(c)
                cells.append("-" if cell is None else f"{cell['psnr']:.2f} ({' / '.join(f'{v:.2f}' for v in cell['psnr_per_seed'].values())}), {cell['steps']:.0f} steps")
            mean = statistics.mean(cell["psnr"] for cell in by_capture.values())
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean:.2f} |")
        lines.append("")
    lines += [f"### Verdict at {max(float(b) for b in summary):g} s{' (as above)' if steps_like else ''} (wins: mean >= +{WIN_MEAN_DB} dB over {baseline}, no capture below {WORST_CAPTURE_DB} dB)", "",
              "| variant | mean gain | per capture | wins |", "| --- | ---: | --- | --- |"]
    for variant, v in verdicts.items():
        per = ", ".join(f"{c} {g:+.2f}" for c, g in v["gain_db"].items())
        lines.append(f"| {variant} | {v['mean_gain_db']:+.2f} dB | {per} | {'yes' if v['wins'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(summary: Dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(summary, key=float)
    captures = sorted({c for b in budgets for bv in summary[b].values() for c in bv})
    fig, axes = plt.subplots(1, len(captures), figsize=(4 * len(captures), 3.2), squeeze=False)
    variants = sorted({v for b in budgets for v in summary[b]})
    for ax, capture in zip(axes[0], captures):
        for variant in variants:
            # The budget, not the measured seconds: untimed runs (one thread, shared machine) stand
            # for the equal wall time their steps were sized to.
            points = [(float(b), summary[b][variant][capture]["psnr"]) for b in budgets if capture in summary[b].get(variant, {})]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=variant, linewidth=2.5 if variant == "off" else 1.0)
        ax.set_title(capture)
        if float(budgets[-1]) > 5 * float(budgets[0]):
            ax.set_xscale("log")
        ax.set_xlabel("training budget (s)")
    axes[0][0].set_ylabel("validation PSNR (dB)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def first_block_training(data: Path, steps: int, run_dir: Path, seed: int = 0):
    """Train block 1 of the stream (the `mclnf-city` preset, FIM-NeRF sampling on) for `steps`,
    in this process; yields (step, pipeline) before every optimiser step and after the last."""
    import torch

    from mclnf_city.trainer import preset_config, setup_trainer

    config = preset_config("mclnf-city", data, run_dir, steps_per_block=steps)
    config.pipeline.fisher.sampling = True
    config.pipeline.datamanager.seed = seed
    pipeline = setup_trainer(config).pipeline
    optimizer = torch.optim.Adam(pipeline.model.active.parameters(), lr=config.optimizers["fields"]["optimizer"].lr, eps=1e-15)
    for step in range(steps + 1):
        if step < steps:
            _, losses, _ = pipeline.get_train_loss_dict(step)  # step 0 places θ_shared on the block
        yield step, pipeline
        if step == steps:
            return
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()


def heatmap(name: str, data: Path, steps: int, out: Path, seed: int = 0) -> Dict:
    """Train block 1 of the stream with FIM-NeRF sampling for `steps`, then score every pixel of
    its photo with the most pixels; write the photo, the heat map and the overlay side by side."""
    import numpy as np
    import torch
    from PIL import Image

    for _, pipeline in first_block_training(data, steps, out / "heatmap_run", seed):
        pass
    model, dm = pipeline.model, pipeline.datamanager
    block = pipeline.stream[0]
    pool = dm.pool(block)
    images = pool.indices(torch.arange(len(pool)), dm.widths)[:, 0]
    image = int(torch.bincount(images).argmax())
    w, h = int(dm.widths[image]), int(dm.heights[image])
    colours = dm.train_images.load(image)
    scores = torch.zeros(h * w)
    with torch.no_grad():
        for start in range(0, h * w, 4096):
            pixels = torch.arange(start, min(start + 4096, h * w))
            indices = torch.stack([torch.full_like(pixels, image), pixels // w, pixels % w], dim=-1)
            batch = {"image": colours[pixels].float() / 255.0}
            outputs = model(dm.train_ray_generator(indices))
            scores[pixels] = model.fisher_scores(outputs, batch)
    photo = colours.reshape(h, w, 3).numpy()
    level = scores.reshape(h, w).numpy()
    level = np.clip(level / max(np.percentile(level, 99), 1e-30), 0, 1)
    import matplotlib

    heat = (matplotlib.colormaps["inferno"](level)[..., :3] * 255).astype(np.uint8)
    overlay = (0.45 * photo + 0.55 * heat).astype(np.uint8)
    Image.fromarray(np.concatenate([photo, heat, overlay], axis=1)).save(out / "score_heatmap.jpg", quality=85)
    share_top_decile = float(torch.topk(scores, max(1, len(scores) // 10)).values.sum() / scores.sum().clamp_min(1e-30))
    result = {"capture": name, "block": block, "image": image, "image_file": str(dm.train_images.paths[image]), "steps": steps,
              "score_share_of_top_10_percent_pixels": share_top_decile, "size": [w, h],
              "score_mean": float(scores.mean())}
    (out / "score_heatmap.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'score_heatmap.jpg'}: photo | score | overlay of {result['image_file']} (block {block}, {steps} steps); "
          f"the top 10 % of pixels hold {100 * share_top_decile:.0f} % of the score")
    return result


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two score vectors (ties broken by order)."""
    import torch

    ra, rb = (torch.argsort(torch.argsort(v)).double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def agreement(name: str, data: Path, steps: int, out: Path, rays: int = 128, seed: int = 0) -> Dict:
    """How well the closed-form score ranks rays like the exact one (‖∇_θ ℓ_r‖² over every
    parameter of the block) through a block's training: at steps 0, 10, 30, 100, 300, ... of
    block 1 (FIM-NeRF sampling on), both scores of `rays` uniformly drawn training rays."""
    import torch

    at = sorted({s for s in (0, 10, 30, 100, 300, 1000, steps) if s <= steps})
    rows = []
    for step, pipeline in first_block_training(data, steps, out / "agreement_run", seed):
        if step not in at:
            continue
        model, dm = pipeline.model, pipeline.datamanager
        dm.fisher, saved = None, dm.fisher  # a uniform draw, away from the training steps' draws
        try:
            ray_bundle, batch = dm.next_train(50_000_000 + step)
        finally:
            dm.fisher = saved
        ray_bundle, batch = ray_bundle[:rays], {"image": batch["image"][:rays]}
        model.train()
        outputs = model(ray_bundle)
        proxy, exact = model.fisher_scores(outputs, batch), model.fisher_scores(outputs, batch, exact=True)
        k = max(1, rays // 10)
        top = len(set(torch.topk(proxy, k).indices.tolist()) & set(torch.topk(exact, k).indices.tolist())) / k
        rows.append({"step": step, "spearman": rank_correlation(proxy, exact), "top_10_percent_overlap": top})
        print(f"{name} block {pipeline.stream[0]} step {step}: Spearman {rows[-1]['spearman']:.3f}, "
              f"top 10 % shared {100 * top:.0f} %", flush=True)
    result = {"capture": name, "rays": rays, "steps": steps, "seed": seed, "checkpoints": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"score_agreement_{name}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captures", nargs="*", default=["oblique_serpentine", "street_walk"], help="zoo captures (tools/bench/zoo.py)")
    p.add_argument("--real", nargs="*", default=[], metavar="NAME=PATH", help="real nerfstudio captures, e.g. made by mclnf-process")
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"of {', '.join(VARIANTS)} and prior_NAME for every --prior NAME=PATH (default: all of them)")
    p.add_argument("--prior", nargs="*", default=[], metavar="NAME=PATH",
                   help="variants prior_NAME: FIM-NeRF off, every block starting from the θ_shared file PATH (e.g. priors "
                        "meta-learned by tools/train_prior.py with and without --fisher-weighting)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=float, default=[600.0], help="training seconds per run (several: a PSNR-vs-time curve)")
    p.add_argument("--mclnf-set", nargs="*", default=[], metavar="PATH=VALUE", help="change the preset for every variant")
    # Small generated captures let a short run revisit every pixel several times (the
    # schedule where scores of earlier visits can matter) within a budget this CPU affords.
    p.add_argument("--width", type=int, help="generated captures' image width (zoo.py's default when unset)")
    p.add_argument("--height", type=int, help="generated captures' image height")
    p.add_argument("--frames", type=int, help="generated captures' number of frames")
    p.add_argument("--real-max-size", type=int, help="train on copies of the real captures with images of this long side (the same "
                   "revisits per pixel as the small generated captures); unset: as they are")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_zoo_captures"), help="generated captures are cached here")
    p.add_argument("--out", type=Path, default=RESULTS / "fisher")
    p.add_argument("--list", action="store_true", help="print the variants and their settings")
    p.add_argument("--heatmap", metavar="NAME=PATH", help="draw where the score concentrates on a photo of this capture (no study run)")
    p.add_argument("--heatmap-steps", type=int, default=300, help="steps of the first block before the heat map is drawn")
    p.add_argument("--agreement", nargs="+", metavar="NAME=PATH",
                   help="rank agreement of the closed-form score with the exact one through the first block's training, "
                        "per capture (no study run; --agreement-steps steps)")
    p.add_argument("--agreement-steps", type=int, default=300)
    p.add_argument("--steps-from", type=Path, metavar="RESULTS_JSON",
                   help="instead of timed runs: train every capture the steps per block that --steps-like reached in this "
                        "timed study (its largest budget); the PSNR then does not depend on the machine's load")
    p.add_argument("--steps-like", default="off", help="with --steps-from: whose steps (off: equal steps, as if FIM-NeRF "
                   "cost nothing; sampling: equal wall time for the sampling variants, which share its cost per step; "
                   "own: each variant's own, i.e. equal wall time)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="with --steps-from: train this many times those steps (--steps-like own --steps-scale 3: equal "
                        "wall time at three times the timed budget, each variant at its own measured cost per step)")
    p.add_argument("--baseline", default="off",
                   help="the variant every gain is measured against (e.g. sampling, for its own variants at --steps-like sampling)")
    p.add_argument("--jobs", type=int, default=1, help="with --steps-from: runs at once (one thread each)")
    p.add_argument("--resume", action="store_true", help="keep the runs of --out/results.json and run only the missing ones")
    p.add_argument("--smoke", action="store_true", help="one tiny capture, seconds (two variants unless --variants)")
    args = p.parse_args(argv)
    if args.list:
        for name, settings in VARIANTS.items():
            print(f"{name:20s} {' '.join(settings) or '(FIM-NeRF off: the preset as shipped)'}")
        return 0
    for flag, steps in (("--heatmap-steps", args.heatmap_steps), ("--agreement-steps", args.agreement_steps)):
        if steps < 1:
            p.error(f"{flag} {steps}: the first block is placed on its first training step, so give at least 1")
    if args.heatmap:
        name, _, path = args.heatmap.partition("=")
        if not path or not (Path(path) / "transforms.json").is_file():
            p.error(f"--heatmap {args.heatmap}: expected NAME=PATH of a nerfstudio capture (PATH/transforms.json)")
        args.out.mkdir(parents=True, exist_ok=True)
        heatmap(name, Path(path), args.heatmap_steps, args.out)
        return 0
    if args.agreement:
        for entry in args.agreement:
            name, _, path = entry.partition("=")
            if not path or not (Path(path) / "transforms.json").is_file():
                p.error(f"--agreement {entry}: expected NAME=PATH of a nerfstudio capture (PATH/transforms.json)")
            agreement(name, Path(path), args.agreement_steps, args.out)
        return 0
    for entry in args.prior:
        name, _, path = entry.partition("=")
        if not path or not Path(path).is_file():
            p.error(f"--prior {entry}: expected NAME=PATH of a θ_shared file (tools/train_prior.py writes them)")
        VARIANTS[f"prior_{name}"] = [f"pipeline.prior={str(Path(path).resolve())!r}"]
    if args.smoke:
        args.captures, args.real, args.seeds, args.budgets = ["orbit_tower"], [], [0], [6.0]
        args.variants = args.variants or ["off", "sampling_corrected"]
    args.variants = args.variants or list(VARIANTS)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if args.baseline not in args.variants:
        p.error(f"the variants must include the baseline {args.baseline!r}: every gain is measured against it")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: List[Dict] = []
    if args.resume and (args.out / "results.json").is_file():
        runs = json.loads((args.out / "results.json").read_text())["runs"]
        print(f"resuming: {len(runs)} runs kept from {args.out / 'results.json'}")
    done = {(r["variant"], float(r["budget"]), r["seed"]) for r in runs}
    # Seeds outermost: a study stopped early still compares every variant on the same seeds.
    # Untimed (--steps-from): the budget follows from the steps, so a (variant, seed) is done once.
    todo = [(None, seed, variant) for seed in args.seeds for variant in args.variants] if args.steps_from else \
        [(budget, seed, variant) for budget in args.budgets for seed in args.seeds for variant in args.variants]
    for budget, seed, variant in todo:
        if any(v == variant and s == seed and (budget is None or b == budget) for v, b, s in done):
            continue
        runs += run_at_steps(args, variant, seed) if budget is None else \
            run_variant(args, variant, budget, seed, args.out / "runs" / f"{variant}_{budget:g}s_seed{seed}")
        (args.out / "results.json").write_text(json.dumps({"command": sys.argv[1:], "runs": runs}, indent=1))
    summary = table(runs)
    verdicts = verdict(summary, args.baseline)
    text = markdown(summary, verdicts, sys.argv[1:] if argv is None else list(argv), args.steps_like if args.steps_from else None,
                    args.baseline)
    print("\n" + text)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"command": sys.argv[1:], "summary": summary, "verdict": verdicts, "runs": runs}, indent=1))
    plot(summary, args.out / "psnr_vs_time.png")
    print(f"wrote {args.out}/results.md, results.json, psnr_vs_time.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

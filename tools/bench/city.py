"""The MCL-NF benchmark: every method side by side on the same blocks, rays and step budgets.

One command, one machine, one run:

    python tools/bench/city.py   # writes tools/bench/results/city/

Methods (each trains the capture's blocks in stream order, `--steps-per-block` steps each,
`--rays` rays per step, every block's rays drawn by the same seeded sampler):
- nerfacto, jointly on all data (`implementation torch`, camera optimiser off), the same
  total number of steps;
- nerfacto fine-tuned block by block in stream order (naive sequential: it forgets);
- mclnf-city with random init per block (no meta-learning, no FIM);
- mclnf-city with the bundled meta-learned prior only, FIM only, and both
  (each over `--seeds` seeds: ray draws, sampling jitter and, for random init, the init).

Plus adaptation curves on one unseen block: test PSNR vs steps from the bundled prior and
from random init, `--adapt-steps` steps each (the 10x target: the prior's PSNR after
steps/10 against random init's after all of them), with the appearance embeddings held at zero
as the presets do, and again with them learned at the field's rate (what made random init
plateau: views without an embedding of their own are rendered with the mean one).

Writes ``summary.json`` (every number) and PNG plots: adaptation curves, per-block PSNR right
after a block finished vs at the end of the stream (forgetting), wall time per method.
The default capture is a generated city with a seed no prior was trained on (900).

    python tools/bench/city.py --smoke --out-dir /tmp/bench_city_smoke   # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from mclnf_city.scenes.make_city import generate_city
from mclnf_city.scenes.options import STANDARD_CITY
from mclnf_city.trainer import preset_config, setup_trainer

from common import RESULTS, SMOKE_MCLNF_SAMPLES, SMOKE_NERFACTO, nerfacto_model, nerfacto_step, parse_args, smoke_city

VARIANTS = {  # mclnf-city variants: (prior, FIM on)
    "mclnf random init": ("random", False),
    "mclnf meta init": ("bundled", False),
    "mclnf FIM only": ("random", True),
    "mclnf meta + FIM": ("bundled", True),
}


def psnr(mse: float) -> float:
    return float(-10.0 * torch.log10(torch.tensor(mse)))


# ---------------------------------------------------------------------- mclnf-city
def mclnf_config(args, data: Path, out: Path, **pipeline):
    """The preset pointed at the capture, with the benchmark's steps and rays (and a smoke run's samples)."""
    config = preset_config(args.preset, data, out, args.steps_per_block, args.rays, **pipeline)
    if args.smoke:
        config.pipeline.model.num_coarse_samples, config.pipeline.model.num_fine_samples = SMOKE_MCLNF_SAMPLES
    return config


def run_mclnf(args, data: Path, work: Path, name: str, prior: str, fisher: bool, seed: int) -> Dict:
    config = mclnf_config(args, data, work / "runs", prior=prior, prior_seed=seed)
    config.pipeline.datamanager.seed = seed
    config.pipeline.fisher.sampling = fisher
    config.pipeline.fisher.loss_weighting = fisher
    config.steps_per_save = 10**9
    torch.manual_seed(seed)
    started, cpu = time.time(), time.process_time()
    trainer = setup_trainer(config)
    trainer.train()
    wall, cpu = time.time() - started, time.process_time() - cpu
    pipeline = trainer.pipeline
    report = json.loads((pipeline.store.root / "report" / "metrics.json").read_text())
    blocks = {
        b: {
            "psnr_at_finish": e["at_finish"].get("psnr"),
            "psnr_at_end": e["at_end"].get("psnr"),
            "renders_alone_bit_identical": e["renders_alone_bit_identical"],
        }
        for b, e in report["blocks"].items()
        if e["at_finish"]
    }
    return {"method": name, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "test_psnr": report["mean"]["psnr"],
            "test_ssim": report["mean"]["ssim"], "blocks": blocks, "stream": list(pipeline.stream)}


# ---------------------------------------------------------------------- nerfacto
@torch.no_grad()
def nerfacto_block_psnr(model, pipeline, views_by_block: Dict[int, List[int]], blocks: List[int]) -> Dict[int, float]:
    model.eval()
    dataset = pipeline.datamanager.eval_dataset
    result = {}
    for b in blocks:
        errs = []
        for i in views_by_block.get(b, []):
            out = model.get_outputs_for_camera(dataset.cameras[i : i + 1])
            gt = dataset[i]["image"][..., :3]
            errs.append(float(torch.mean((out["rgb"] - gt) ** 2)))
        if errs:
            result[b] = statistics.mean(psnr(e) for e in errs)
    model.train()
    return result


def run_nerfacto(args, pipeline, sequential: bool, seed: int) -> Dict:
    """nerfacto trained jointly (rays from every pixel) or block by block in stream order."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes

    model, optimizer = nerfacto_model(pipeline, seed, **(SMOKE_NERFACTO if args.smoke else {}))
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=pipeline, trainer=None))
    dm = pipeline.datamanager
    saved_seed = dm.train_pixel_sampler.seed
    dm.train_pixel_sampler.seed = seed
    views = pipeline.report.test_views_by_block()
    total = len(pipeline.stream) * args.steps_per_block
    at_finish, started, cpu = {}, time.time(), time.process_time()
    model.train()
    for step in range(total):
        block = pipeline.stream[step // args.steps_per_block]
        dm.active_block = block if sequential else None
        nerfacto_step(model, optimizer, callbacks, dm, step)
        if (step + 1) % args.steps_per_block == 0:
            if sequential:  # the block that just finished, as it is now
                at_finish.update(nerfacto_block_psnr(model, pipeline, views, [block]))
            print(f"nerfacto {'sequential' if sequential else 'joint'}: step {step + 1}/{total} "
                  f"({time.time() - started:.0f} s)", flush=True)
    at_end = nerfacto_block_psnr(model, pipeline, views, pipeline.stream)
    dm.active_block, dm.train_pixel_sampler.seed = None, saved_seed
    per_view = nerfacto_block_psnr(model, pipeline, {-1: list(range(len(dm.eval_dataset)))}, [-1])[-1]
    wall, cpu = time.time() - started, time.process_time() - cpu
    blocks = {str(b): {"psnr_at_finish": at_finish.get(b), "psnr_at_end": at_end.get(b)} for b in at_end}
    name = "nerfacto sequential" if sequential else "nerfacto joint"
    return {"method": name, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "test_psnr": per_view,
            "blocks": blocks, "stream": list(pipeline.stream)}


# ---------------------------------------------------------------------- adaptation
def block_test_rays(pipeline, block: int):
    """Rays of the test images that cross the block's grown box, with their colours."""
    dm = pipeline.datamanager
    dataset = dm.eval_dataset
    bundles, colors = [], []
    for i in range(len(dataset)):
        rays = dataset.cameras[i : i + 1].generate_rays(camera_indices=0, keep_shape=False)
        crossing = pipeline.partition.crossing_mask(rays.origins.double(), rays.directions.double())[:, block]
        if crossing.any():
            bundles.append(rays[crossing])
            colors.append(dataset[i]["image"][..., :3].reshape(-1, 3)[crossing])
    from nerfstudio.cameras.rays import RayBundle

    cat = RayBundle(
        origins=torch.cat([r.origins for r in bundles]),
        directions=torch.cat([r.directions for r in bundles]),
        pixel_area=torch.cat([r.pixel_area for r in bundles]),
    )  # no camera index: test views use the block's mean appearance embedding
    return cat, torch.cat(colors)


@torch.no_grad()
def adapt_psnr(model, rays, colors, chunk: int = 4096) -> float:
    """PSNR of the active block alone on its test rays: training routing (it answers every
    sample, as while it trains), fixed sampling jitter, mean appearance embedding."""
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sq = sum(float(((model(rays[s : s + chunk])["rgb"] - colors[s : s + chunk]) ** 2).sum())
                 for s in range(0, len(colors), chunk))
    return psnr(sq / colors.numel())


def adaptation_curves(args, pipeline) -> Dict:
    from mclnf_city.prior import initial_prior

    model, dm = pipeline.model, pipeline.datamanager
    block = pipeline.stream[0]
    rays, colors = block_test_rays(pipeline, block)
    checkpoints = sorted({0, 10, 20, 50, 100, 200, 500, 1000, args.adapt_steps} & set(range(args.adapt_steps + 1)))
    curves = {}
    # As the presets: appearance embeddings held at zero. The "appearance learned" curves show what
    # learning them at the field's rate does to views rendered with the mean embedding.
    variants = [("random init", "random", False), ("meta-learned prior", "bundled", False),
                ("random init, appearance learned", "random", True), ("meta-learned prior, appearance learned", "bundled", True)]
    for name, asked, appearance in variants:
        prior, source = initial_prior(asked, pipeline.config.model.field, seed=0)
        model.prior = prior
        model.start_block(block)
        dm.active_block = block
        params = [p for k, p in model.active.named_parameters() if appearance or not k.startswith("appearance.")]
        optimizer = torch.optim.Adam(params, lr=1e-2, eps=1e-15)
        curve, started = {}, time.time()
        torch.manual_seed(0)
        for step in range(args.adapt_steps + 1):
            if step in checkpoints:
                curve[step] = adapt_psnr(model, rays, colors)
                print(f"adapt {name:40s} step {step:5d}: test PSNR {curve[step]:.2f} ({time.time() - started:.0f} s)", flush=True)
            if step == args.adapt_steps:
                break
            for group in optimizer.param_groups:  # the stream's schedule: exponential decay to 10%
                group["lr"] = 1e-2 * 0.1 ** (step / max(args.adapt_steps - 1, 1))
            model.train()
            ray_bundle, batch = dm.next_train(step)
            loss = torch.mean((model(ray_bundle)["rgb"] - batch["image"]) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        curves[name] = {"source": source, "psnr": curve}
    dm.active_block = None
    random_final = curves["random init"]["psnr"][args.adapt_steps]
    meta = curves["meta-learned prior"]["psnr"]
    reached = [s for s in sorted(meta) if meta[s] >= random_final]
    return {
        "block": block, "test_rays": len(colors), "steps": args.adapt_steps, "curves": curves,
        "random_init_final_psnr": random_final,
        "prior_steps_to_reach_it": reached[0] if reached else None,
        "target": f"prior reaches it in <= {args.adapt_steps // 10} steps (10x)",
    }


# ---------------------------------------------------------------------- plots
def plots(summary: Dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "adaptation" in summary:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, c in summary["adaptation"]["curves"].items():
            steps = sorted(c["psnr"], key=int)  # int keys in memory, str keys once read from JSON
            ax.plot([max(int(s), 1) for s in steps], [c["psnr"][s] for s in steps], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("steps on the new block (step 0 drawn at 1)")
        ax.set_ylabel("test PSNR of the block (dB)")
        ax.set_title(f"Adaptation on unseen block {summary['adaptation']['block']}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "adaptation.png", dpi=120)
        plt.close(fig)

    if not summary.get("runs"):
        return
    runs = [r for r in summary["runs"] if r["seed"] == summary["seeds"][0]]
    fig, axes = plt.subplots(1, len(runs), figsize=(2.6 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], runs):
        blocks = [str(b) for b in r["stream"]]
        x = range(len(blocks))
        finish = [r["blocks"].get(b, {}).get("psnr_at_finish") or float("nan") for b in blocks]
        end = [r["blocks"].get(b, {}).get("psnr_at_end") or float("nan") for b in blocks]
        ax.bar([i - 0.2 for i in x], finish, 0.4, label="right after the block")
        ax.bar([i + 0.2 for i in x], end, 0.4, label="end of stream")
        ax.set_xticks(list(x), blocks)
        ax.set_xlabel("block (stream order)")
        ax.set_title(r["method"], fontsize=9)
    axes[0][0].set_ylabel("block test PSNR (dB)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "forgetting.png", dpi=120)
    plt.close(fig)

    table = summary["table"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(table)
    ax.barh(names, [table[n]["cpu_s_median"] for n in names])
    ax.set_xlabel("CPU time of the whole stream incl. evaluation (s), median over seeds")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "wall_time.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- main
def summarise(runs: List[Dict]) -> Dict:
    table: Dict[str, Dict] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        psnrs = [r["test_psnr"] for r in mine]
        drops = []
        for r in mine:
            for e in r["blocks"].values():
                if e.get("psnr_at_finish") is not None and e.get("psnr_at_end") is not None:
                    drops.append(e["psnr_at_finish"] - e["psnr_at_end"])
        identical = [e.get("renders_alone_bit_identical") for r in mine for e in r["blocks"].values()]
        table[name] = {
            "seeds": [r["seed"] for r in mine],
            "test_psnr_mean": statistics.mean(psnrs),
            "test_psnr_std": statistics.stdev(psnrs) if len(psnrs) > 1 else 0.0,
            "test_psnr_runs": psnrs,
            "max_block_psnr_drop_db": max(drops) if drops else None,
            "renders_alone_bit_identical": all(identical) if all(i is not None for i in identical) else None,
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in mine),
        }
    return table


def merge(paths: List[Path], out: Path) -> None:
    """One summary from parts of the same settings run side by side (e.g. one process per core)."""
    parts = [json.loads(p.read_text()) for p in paths]
    keys = ("data", "preset", "steps_per_block", "rays_per_step", "seeds")
    if any(p.get(k) != parts[0].get(k) for p in parts for k in keys):
        raise SystemExit(f"cannot merge benchmarks of different settings: {[p.get(k) for p in parts for k in keys]}")
    summary = {k: parts[0][k] for k in keys}
    summary["commands"] = [c for p in parts for c in p["commands"]]
    summary["threads"] = sorted({p["threads"] for p in parts})
    summary["runs"] = [r for p in parts for r in p["runs"]]
    for p in parts:
        if "adaptation" in p:
            summary["adaptation"] = p["adaptation"]
    summary["table"] = summarise(summary["runs"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plots(summary, out)
    print(json.dumps(summary["table"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a nerfstudio capture (default: generated city, seed 900)")
    parser.add_argument("--preset", default="mclnf-city-tiny")
    parser.add_argument("--steps-per-block", type=int, default=150)
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of every mclnf-city variant")
    parser.add_argument("--adapt-steps", type=int, default=2000, help="steps of each adaptation curve (0: skip)")
    parser.add_argument("--skip-nerfacto", action="store_true")
    parser.add_argument("--methods", nargs="*", default=list(VARIANTS), help="mclnf-city variants to run")
    parser.add_argument("--one-seed", nargs="*", default=[], help="variants run with seed 0 only (to save time)")
    parser.add_argument("--only", nargs="*", choices=["adapt", "nerfacto", "mclnf"], default=["adapt", "nerfacto", "mclnf"],
                        help="run only these parts, merging into an existing summary.json of the same settings")
    parser.add_argument("--merge", nargs="*", type=Path, default=None,
                        help="only merge these summary.json files (parts run in parallel) into --out-dir, and plot")
    parser.add_argument("--out-dir", type=Path, default=RESULTS / "city")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a sparse 40x30 city, one step per block, one seed: checks that the benchmark runs "
                             "(other options still override)")
    args = parse_args(parser, steps_per_block=1, rays=64, seeds=1, adapt_steps=2, out_dir=Path(tempfile.gettempdir()) / "bench_city_smoke")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.merge, args.out_dir)
        return
    # A smoke run keeps its runs under its output directory, so a test's temporary directory holds it all.
    work = Path(tempfile.mkdtemp(prefix="bench_city_", dir=args.out_dir if args.smoke else None))
    data = args.data
    if data is None and args.smoke:
        data = smoke_city(work / "city_900", seed=900)
    elif data is None:
        data = generate_city(work / "city_900", seed=900, style="downtown", progress=False, verbose=False, **STANDARD_CITY)

    generated = "generated city, seed 900" + (" (smoke: 40x30, sparse flight, fewer samples per ray)" if args.smoke else "")
    settings = {"data": str(args.data or generated), "preset": args.preset,
                "steps_per_block": args.steps_per_block, "rays_per_step": args.rays, "seeds": list(range(args.seeds))}
    out_json = args.out_dir / "summary.json"
    summary: Dict = {**settings, "commands": [], "threads": torch.get_num_threads(), "runs": []}
    if set(args.only) != {"adapt", "nerfacto", "mclnf"} and out_json.exists():
        summary = json.loads(out_json.read_text())
        if any(summary.get(k) != v for k, v in settings.items()):
            parser.error(f"{out_json} holds a benchmark of other settings: use another --out-dir")
    summary["commands"].append("python tools/bench/city.py " + shlex.join(sys.argv[1:]))

    def save():
        if summary["runs"]:
            summary["table"] = summarise(summary["runs"])
        out_json.write_text(json.dumps(summary, indent=1))

    probe = setup_trainer(mclnf_config(args, data, work / "probe", prior="random"))
    pipeline = probe.pipeline
    if args.adapt_steps > 0 and "adapt" in args.only:
        summary["adaptation"] = adaptation_curves(args, pipeline)
        save()
    if not args.skip_nerfacto and "nerfacto" in args.only:
        for sequential in (False, True):
            summary["runs"].append(run_nerfacto(args, pipeline, sequential, seed=0))
            save()
    for seed in range(args.seeds if "mclnf" in args.only else 0):
        for name in args.methods:
            if seed > 0 and name in args.one_seed:
                continue
            prior, fisher = VARIANTS[name]
            summary["runs"].append(run_mclnf(args, data, work, name, prior, fisher, seed))
            r = summary["runs"][-1]
            print(f"{name} seed {seed}: test PSNR {r['test_psnr']:.2f} in {r['wall_s']:.0f} s", flush=True)
            save()
    save()
    plots(summary, args.out_dir)
    print(json.dumps(summary.get("table"), indent=1))
    print(f"wrote {out_json} and plots in {args.out_dir} (runs in {work})")


if __name__ == "__main__":
    main()

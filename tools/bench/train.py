"""Training speed and memory: mclnf-city vs nerfacto (torch), same capture, same machine, one run.

Each configuration runs as its own `ns-train` process. Seconds per step come from
nerfstudio's profiler (mean of `Trainer.train_iteration` over the run, which includes
warm-up and, for mclnf-city, block switches); peak RSS from the kernel (`wait4`).
Runs are repeated and the median is reported, since these machines are noisy.

    python tools/bench/train.py --data assets/demo_city --repeats 2   # writes tools/bench/results/train.json
    python tools/bench/train.py --smoke --out /tmp/bench_train_smoke/bench_train.json   # seconds: the test suite runs this
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, RESULTS, SMOKE_MCLNF_SAMPLES, SMOKE_NERFACTO, parse_args, run_to_log, smoke_city, write_json

BIN = Path(sys.executable).parent
COMMON = ["--vis", "tensorboard", "--machine.device-type", "cpu", "--steps-per-save", "100000"]
# --smoke: every ns-train process spends about 10 s starting up here, so three configurations, which
# between them use both entry points (ns_train_offline.py, ns-train), both presets and --pipeline.grid.
SMOKE_CONFIGS = ("nerfacto (torch)", "mclnf-city", "mclnf-city-tiny 16 blocks")


def cli_flags(prefix: str, fields) -> list:
    """Config fields as ns-train flags: {"num_nerf_samples_per_ray": 16} -> ["--PREFIX.num-nerf-samples-per-ray", "16"]."""
    flags = []
    for key, value in fields.items():
        flags += [f"--{prefix}.{key.replace('_', '-')}", *map(str, value if isinstance(value, (tuple, list)) else [value])]
    return flags


def run(cmd, log: Path):
    """Run a command; return (seconds per train step, peak RSS in MB, wall seconds)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.time()
    status, usage = run_to_log(cmd, env, log)
    wall = time.time() - start
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed, see {log}:\n{text[-2000:]}")
    match = re.search(r"Trainer\.train_iteration: ([0-9.]+)", text)
    if not match:
        raise RuntimeError(f"no profiler line in {log}")
    return float(match.group(1)), usage.ru_maxrss / 1024.0, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="nerfstudio capture (default: assets/demo_city; with --smoke, a sparse 40x30 version of it, generated)")
    parser.add_argument("--rays", type=int, default=4096, help="rays per training step, every method")
    parser.add_argument("--nerfacto-steps", type=int, default=12, help="nerfacto steps per run (slow on CPU)")
    parser.add_argument("--steps-per-block", type=int, default=15, help="mclnf-city steps per block")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json", help="JSON written here")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a sparse 40x30 city, three configurations, 2 steps per block or run, one repeat: "
                             "checks that the benchmark runs (other options still override)")
    args = parse_args(parser, rays=64, nerfacto_steps=2, steps_per_block=2, repeats=1,
                      out=Path(tempfile.gettempdir()) / "bench_train_smoke" / "bench_train.json")
    nerfacto_sizes, mclnf_sizes = [], []
    if args.smoke:  # the smoke capture and model sizes
        nerfacto_sizes = cli_flags("pipeline.model", SMOKE_NERFACTO)
        mclnf_sizes = cli_flags("pipeline.model", dict(zip(("num_coarse_samples", "num_fine_samples"), SMOKE_MCLNF_SAMPLES)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A smoke run keeps its runs beside its output, so a test's temporary directory holds it all.
    work = Path(tempfile.mkdtemp(prefix="bench_train_", dir=args.out.parent if args.smoke else None))
    if args.data is None and args.smoke:
        args.data = smoke_city(work / "city_0", seed=0)
    args.data = args.data or ROOT / "assets" / "demo_city"
    rays = ["--pipeline.datamanager.train-num-rays-per-batch", str(args.rays)]
    ours = ["--data", str(args.data), "--pipeline.steps-per-block", str(args.steps_per_block), *rays, *mclnf_sizes, *COMMON]
    configs = {
        "nerfacto (torch)": [sys.executable, str(Path(__file__).resolve().parent / "ns_train_offline.py"), "nerfacto", "--data", str(args.data),
                             "--pipeline.model.implementation", "torch", "--max-num-iterations", str(args.nerfacto_steps),
                             "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
                             "--steps-per-eval-all-images", "100000", *rays, *nerfacto_sizes, *COMMON],
        "mclnf-city": [str(BIN / "ns-train"), "mclnf-city", *ours],
        "mclnf-city-tiny": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours],
        "mclnf-city-tiny 4 blocks": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours, "--pipeline.grid", "2", "2"],
        "mclnf-city-tiny 16 blocks": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours, "--pipeline.grid", "4", "4"],
    }
    if args.smoke:
        configs = {name: cmd for name, cmd in configs.items() if name in SMOKE_CONFIGS}
    results = {}
    for name, cmd in configs.items():
        runs = []
        for r in range(args.repeats):
            out_dir = work / f"{len(results)}_{r}"
            sec, rss, wall = run([*cmd, "--output-dir", str(out_dir)], work / f"{len(results)}_{r}.log")
            runs.append({"s_per_step": sec, "rays_per_s": args.rays / sec, "peak_rss_mb": rss, "wall_s": wall})
            print(f"{name:28s} run {r}: {sec:.3f} s/step, {args.rays / sec:,.0f} rays/s, peak RSS {rss:,.0f} MB", flush=True)
        results[name] = {k: statistics.median(x[k] for x in runs) for k in runs[0]} | {"runs": runs}
    base = results["nerfacto (torch)"]["rays_per_s"]
    print(f"\n{'configuration':28s} {'s/step':>8s} {'rays/s':>9s} {'vs nerfacto':>12s} {'peak RSS MB':>12s}")
    for name, r in results.items():
        print(f"{name:28s} {r['s_per_step']:8.3f} {r['rays_per_s']:9,.0f} {r['rays_per_s'] / base:11.1f}x {r['peak_rss_mb']:12,.0f}")
    summary = {"data": str(args.data), "smoke": args.smoke, "rays_per_step": args.rays, "repeats": args.repeats, "cpu_count": os.cpu_count(),
               "command": " ".join(sys.argv), "results": results}
    write_json(args.out, summary)
    print(f"\nwrote {args.out} (logs in {work})")


if __name__ == "__main__":
    main()

"""Training speed and memory: mclnf-city vs nerfacto (torch), same capture, same machine, one run.

Each configuration runs as its own `ns-train` process. Seconds per step come from
nerfstudio's profiler (mean of `Trainer.train_iteration` over the run, which includes
warm-up and, for mclnf-city, block switches); peak RSS from the kernel (`wait4`).
Runs are repeated and the median is reported, since these machines are noisy.

    python tools/bench_train.py --data assets/demo_city --repeats 2 --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMON = ["--vis", "tensorboard", "--machine.device-type", "cpu", "--steps-per-save", "100000"]


def run(cmd, log: Path):
    """Run a command; return (seconds per train step, peak RSS in MB, wall seconds)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
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
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_city", help="nerfstudio capture")
    parser.add_argument("--rays", type=int, default=4096, help="rays per training step, every method")
    parser.add_argument("--nerfacto-steps", type=int, default=12, help="nerfacto steps per run (slow on CPU)")
    parser.add_argument("--steps-per-block", type=int, default=15, help="mclnf-city steps per block")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (median reported)")
    parser.add_argument("--out", type=Path, default=Path("bench_train.json"), help="JSON written here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    rays = ["--pipeline.datamanager.train-num-rays-per-batch", str(args.rays)]
    ours = ["--data", str(args.data), "--pipeline.steps-per-block", str(args.steps_per_block), *rays, *COMMON]
    configs = {
        "nerfacto (torch)": [sys.executable, str(ROOT / "tools" / "ns_train_offline.py"), "nerfacto", "--data", str(args.data),
                             "--pipeline.model.implementation", "torch", "--max-num-iterations", str(args.nerfacto_steps),
                             "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
                             "--steps-per-eval-all-images", "100000", *rays, *COMMON],
        "mclnf-city": [str(BIN / "ns-train"), "mclnf-city", *ours],
        "mclnf-city-tiny": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours],
        "mclnf-city-tiny 4 blocks": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours, "--pipeline.grid", "2", "2"],
        "mclnf-city-tiny 16 blocks": [str(BIN / "ns-train"), "mclnf-city-tiny", *ours, "--pipeline.grid", "4", "4"],
    }
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
    summary = {"data": str(args.data), "rays_per_step": args.rays, "repeats": args.repeats, "cpu_count": os.cpu_count(),
               "command": " ".join(sys.argv), "results": results}
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out} (logs in {work})")


if __name__ == "__main__":
    main()

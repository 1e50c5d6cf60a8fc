"""Block-parallel training: wall time of N processes against one, and whether the blocks agree.

    python tools/bench/parallel.py --data assets/demo_city --steps-per-block 150   # writes tools/bench/results/parallel.json
    python tools/bench/parallel.py --smoke --work /tmp/w --out /tmp/bench_parallel.json   # the test suite runs this

Runs `ns-train mclnf-city-tiny` three ways on the same capture, one after another:
1. one process, one block per wave (the default stream: every block sees all earlier blocks);
2. one process, waves of N blocks (`--pipeline.blocks-per-wave N`): the reference of 3;
3. N processes (`--machine.num-devices N`, gloo on the CPU), one block each per wave.
Reports the wall time of each run (process start to exit: set-up, training, per-block
evaluation and the city report), test PSNR, and the largest difference between the blocks of
runs 2 and 3 (zero when the processes train bit for bit what one process trains).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mclnf_city.scenes.make_city import generate_city

from common import ROOT, RESULTS, parse_args, write_json

# --smoke: a tiny generated city (sparse flight: few test views to evaluate) and cheap steps.
SMOKE_CITY = dict(blocks_x=2, blocks_y=2, image_width=40, image_height=30, drone_line_spacing=60.0, drone_step=40.0, street_step=80.0)
SMOKE_TRAIN = ["--pipeline.datamanager.train-num-rays-per-batch", "64",
               "--pipeline.model.num-coarse-samples", "8", "--pipeline.model.num-fine-samples", "8"]


def train(data: Path, out: Path, steps: int, extra: list) -> dict:
    cmd = [str(Path(sys.executable).parent / "ns-train"), "mclnf-city-tiny", "--data", str(data), "--output-dir", str(out),
           "--timestamp", "run", "--vis", "tensorboard", "--machine.device-type", "cpu",
           "--pipeline.steps-per-block", str(steps), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    run_dir = next(out.glob("*/mclnf-city-tiny/run"))
    report = json.loads((run_dir / "city" / "report" / "metrics.json").read_text())
    return {"command": " ".join(["ns-train", *cmd[1:]]), "wall_s": seconds, "test_psnr": report["mean"]["psnr"],
            "store": str(run_dir / "city")}


def largest_block_difference(store_a: str, store_b: str) -> float:
    from mclnf_city.store import CityStore

    a, b = CityStore(Path(store_a)), CityStore(Path(store_b))
    assert sorted(a.done_blocks()) == sorted(b.done_blocks())
    worst = 0.0
    for block in a.done_blocks():
        x, y = a.load_block(block), b.load_block(block)
        worst = max([worst] + [float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].numel()])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="nerfstudio capture (default: assets/demo_city; --smoke: a tiny generated city)")
    parser.add_argument("--steps-per-block", type=int, default=150, help="training steps of every block")
    parser.add_argument("--processes", type=int, default=2, help="N: processes of the parallel run (and its wave size)")
    parser.add_argument("--work", type=Path, default=None,
                        help="a new directory for the runs (and the --smoke city) is made in it (default: the system's temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="JSON written here (default: tools/bench/results/parallel.json; --smoke: beside the runs)")
    parser.add_argument("--smoke", action="store_true",
                        help="the three runs on a tiny generated city, 3 cheap steps per block: checks that the benchmark runs")
    args = parse_args(parser, steps_per_block=3)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    # Always new run directories: ns-train would resume a run of the same name, training nothing.
    work = Path(tempfile.mkdtemp(prefix="bench_parallel_", dir=args.work))
    extra = []
    if args.smoke:
        if args.data is None:
            args.data = generate_city(work / "city", seed=3, progress=False, verbose=False, **SMOKE_CITY)
        extra = SMOKE_TRAIN
    data = args.data or ROOT / "assets" / "demo_city"
    out = args.out or (work / "bench_parallel.json" if args.smoke else RESULTS / "parallel.json")
    n = str(args.processes)
    runs = {
        "1 process, waves of 1": train(data, work / "serial", args.steps_per_block, extra),
        f"1 process, waves of {n}": train(data, work / "waves", args.steps_per_block, [*extra, "--pipeline.blocks-per-wave", n]),
        f"{n} processes": train(data, work / "parallel", args.steps_per_block, [*extra, "--machine.num-devices", n]),
    }
    for name, r in runs.items():
        print(f"{name:24s} {r['wall_s']:7.1f} s  test PSNR {r['test_psnr']:.2f} dB")
    diff = largest_block_difference(runs[f"1 process, waves of {n}"]["store"], runs[f"{n} processes"]["store"])
    speedup = runs[f"1 process, waves of {n}"]["wall_s"] / runs[f"{n} processes"]["wall_s"]
    print(f"{n} processes vs 1 process (same waves): {speedup:.2f}x faster; largest block difference {diff:g}")
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cpu_count": os.cpu_count(),
              "torch_threads_one_process": torch.get_num_threads(), "runs": runs,
              "speedup_same_waves": speedup, "largest_block_difference": diff}
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

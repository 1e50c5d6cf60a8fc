"""Where a training step's time goes: torch.profiler over a few mclnf-city steps, in-process.

    python tools/bench/profile_train.py --preset mclnf-city --data assets/demo_city --steps 6

Prints the operators with the largest self CPU time, and the share of the step spent in
the hash-grid encoding, the MLPs, the sampler/routing and the optimizer (from record_function
ranges). Warm-up steps are excluded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mclnf_city.trainer import preset_config, setup_trainer

from common import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mclnf-city", help="method preset")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_city", help="nerfstudio capture")
    parser.add_argument("--rays", type=int, default=None, help="rays per step (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="override a model field, e.g. --set num_coarse_samples 16 (repeatable)")
    args = parser.parse_args()

    config = preset_config(args.preset, args.data, Path(tempfile.mkdtemp(prefix="profile_")), steps_per_block=10_000, rays=args.rays)
    config.pipeline.prior = "random"  # the prior does not change the cost of a step
    for key, value in args.set:
        setattr(config.pipeline.model, key, type(getattr(config.pipeline.model, key))(value))
    trainer = setup_trainer(config)
    for step in range(args.warmup):
        trainer.train_iteration(step)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for step in range(args.warmup, args.warmup + args.steps):
            trainer.train_iteration(step)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rays = config.pipeline.datamanager.train_num_rays_per_batch
    print(f"{args.preset}: {total / 1e6 / args.steps:.3f} s/step self CPU, {rays} rays/step, torch threads {torch.get_num_threads()}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    ranges = [e for e in events if e.key.startswith("mclnf:")]
    for e in sorted(ranges, key=lambda e: -e.cpu_time_total):
        print(f"{e.key:32s} {e.cpu_time_total / total:6.1%} of the step (incl. children), {e.count // args.steps} per step")


if __name__ == "__main__":
    main()

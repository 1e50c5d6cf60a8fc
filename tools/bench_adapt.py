"""Adaptation curves on an unseen block: meta-learned θ_shared vs the default init.

θ_shared is meta-trained (Reptile, Adam inner loop) on every block of the capture except
the held-out one; then the held-out block is trained from each init with the same
optimizer, the same steps and the same rays, and its PSNR on a fixed batch of its own
held-out rays is recorded along the way. A preliminary check for issue 3, not its
full benchmark (no FIM, no nerfacto baselines yet).

    python tools/bench_adapt.py --data assets/demo_city --meta-steps 30 --out docs/bench_adapt.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def psnr_on(pipeline, batches) -> float:
    model = pipeline.model
    with torch.no_grad():
        errs = []
        for ray_bundle, data in batches:
            out = model(ray_bundle)
            errs.append(torch.mean((out["rgb"] - data["image"]) ** 2))
    return float(-10 * torch.log10(torch.stack(errs).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo_city")
    parser.add_argument("--meta-steps", type=int, default=30)
    parser.add_argument("--inner-steps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="adaptation steps on the held-out block")
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("bench_adapt.json"))
    args = parser.parse_args()

    from conftest import tiny_trainer_config

    import tempfile

    config = tiny_trainer_config(args.data, Path(tempfile.mkdtemp(prefix="bench_adapt_")), steps_per_block=args.steps)
    config.pipeline.datamanager.train_num_rays_per_batch = args.rays
    config.pipeline.model.num_coarse_samples = 24
    config.pipeline.model.num_fine_samples = 24
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline, model, dm = trainer.pipeline, trainer.pipeline.model, trainer.pipeline.datamanager
    held_out = pipeline.stream[-1]
    train_blocks = pipeline.stream[:-1]
    default = {k: v.clone() for k, v in model.prior.items()}

    config.pipeline.meta.meta_steps = args.meta_steps
    config.pipeline.meta.inner_steps = args.inner_steps
    t0 = time.time()
    theta = pipeline.learn_prior(train_blocks)  # Reptile (the default), Adam inner loop
    meta_seconds = time.time() - t0

    model.train()
    dm.active_block = held_out
    eval_batches = [dm.next_train(20_000_000 + i) for i in range(4)]  # fixed rays, never trained on
    checkpoints = sorted({0, 10, 25, 50, 100, 200, args.steps})
    curves = {}
    for name, init in (("default init", default), ("meta-learned", theta)):
        model.prior = init
        model.start_block(held_out)
        opt = torch.optim.Adam(model.active.parameters(), lr=1e-2, eps=1e-15)
        curve = {}
        for step in range(args.steps + 1):
            if step in checkpoints:
                # training-mode routing: the block alone answers for the whole ray, as while it trains
                curve[step] = psnr_on(pipeline, eval_batches)
                print(f"{name:14s} step {step:4d}: PSNR {curve[step]:.2f}", flush=True)
            if step == args.steps:
                break
            lr = 1e-2 * 0.1 ** (step / max(args.steps - 1, 1))
            for g in opt.param_groups:
                g["lr"] = lr
            ray_bundle, data = dm.next_train(step)  # same rays for both inits
            loss = torch.mean((model(ray_bundle)["rgb"] - data["image"]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        curves[name] = curve
    summary = {
        "data": str(args.data), "held_out_block": held_out, "meta_blocks": train_blocks, "meta_steps": args.meta_steps,
        "inner_steps": args.inner_steps, "meta_seconds": round(meta_seconds, 1), "rays_per_step": args.rays,
        "psnr_on_held_out_rays": curves, "command": " ".join(sys.argv),
    }
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(curves, indent=1))


if __name__ == "__main__":
    main()

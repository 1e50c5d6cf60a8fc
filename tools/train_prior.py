"""Meta-train the bundled θ_shared on many generated cities and write it to mclnf_city/priors (linked from assets/priors).

Every block of every generated city is a task. Cities come from mclnf_city.scenes.make_city with
seeds `--first-seed ...` in turn over the three styles; none of them is the demo city
(seed 0) or a benchmark city (seeds >= 900), so those stay unseen. The prior is written
as ``mclnf_city/priors/<architecture>.pt`` (the name `--pipeline.prior bundled` looks for),
with ``<architecture>.json`` beside it recording the command, seeds, settings and time.

    python tools/train_prior.py --preset mclnf-city-tiny --cities 8 --meta-steps 200
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mclnf_city.scenes.make_city import generate_city
from mclnf_city.scenes.options import STANDARD_CITY
from mclnf_city.trainer import preset_config, setup_trainer

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("downtown", "oldtown", "suburb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mclnf-city-tiny", help="architecture of the prior: a method preset")
    parser.add_argument("--cities", type=int, default=8, help="generated cities (4 blocks each)")
    parser.add_argument("--first-seed", type=int, default=100, help="seeds first-seed ... first-seed + cities - 1")
    parser.add_argument("--meta-steps", type=int, default=200)
    parser.add_argument("--algorithm", default="reptile", choices=["reptile", "fomaml", "maml"])
    parser.add_argument("--inner-steps", type=int, default=16)
    parser.add_argument("--inner-lr", type=float, default=1e-2)
    parser.add_argument("--outer-lr", type=float, default=0.5)
    parser.add_argument("--tasks-per-batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the meta-learning's task and ray draws")
    parser.add_argument("--fisher-weighting", action="store_true",
                        help="weight each ray's inner-loop loss by its FIM-NeRF score (--pipeline.meta.fisher-weighting)")
    parser.add_argument("--rays", type=int, default=1024, help="rays per inner step")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the cities are generated (default: a temp dir)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "mclnf_city" / "priors")
    args = parser.parse_args()
    if args.first_seed <= 0 < args.first_seed + args.cities or args.first_seed + args.cities > 900:
        parser.error("seeds must avoid 0 (the demo city) and >= 900 (benchmark cities)")

    from mclnf_city.prior import bundled_prior_path, learn_prior
    from mclnf_city.files import atomic_write_bytes
    from mclnf_city.store import sha256, tensor_bytes

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="train_prior_"))
    started = time.time()
    tasks, pipelines, cities = [], [], []
    for i in range(args.cities):
        seed, style = args.first_seed + i, STYLES[i % len(STYLES)]
        capture = work / f"city_{seed}"
        if not (capture / "transforms.json").exists():
            generate_city(capture, seed=seed, style=style, progress=False, verbose=False, **STANDARD_CITY)
        config = preset_config(args.preset, capture, work / "runs", rays=args.rays, prior="random", prior_seed=0)
        config.pipeline.store_dir = work / "runs" / f"store_{seed}"
        pipeline = setup_trainer(config).pipeline
        pipelines.append(pipeline)
        tasks += [(pipeline, b) for b in pipeline.stream]
        cities.append({"seed": seed, "style": style, "blocks": list(pipeline.stream)})
        print(f"city {seed} ({style}): blocks {list(pipeline.stream)}", flush=True)
    generated = time.time() - started

    cfg = pipelines[0].config.meta
    cfg.meta_steps, cfg.algorithm, cfg.inner_steps = args.meta_steps, args.algorithm, args.inner_steps
    cfg.inner_lr, cfg.outer_lr, cfg.tasks_per_batch = args.inner_lr, args.outer_lr, args.tasks_per_batch
    cfg.fisher_weighting, cfg.seed = args.fisher_weighting, args.seed
    t0 = time.time()
    theta = learn_prior(tasks, pipelines[0].model.prior, cfg)
    meta_seconds = time.time() - t0

    spec = pipelines[0].config.model.field
    path = args.out_dir / bundled_prior_path(spec).name
    data = tensor_bytes(theta)
    atomic_write_bytes(path, data)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "file": path.name,
        "sha256": sha256(data),
        "preset": args.preset,
        "architecture": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
        "command": "python tools/train_prior.py " + " ".join(sys.argv[1:]),
        "cities": cities,
        "city_parameters": STANDARD_CITY,
        "start": "default init, seed 0",
        "meta_learning": {k: getattr(cfg, k) for k in ("algorithm", "meta_steps", "inner_steps", "inner_lr", "outer_lr",
                                                        "tasks_per_batch", "seed", "fisher_weighting")},
        "rays_per_inner_step": args.rays,
        "seconds": {"generate_and_setup": round(generated, 1), "meta_training": round(meta_seconds, 1)},
        "machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "git_commit": commit,
    }
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(record, indent=1).encode())
    print(f"wrote {path} ({len(data) / 1e6:.1f} MB) and {path.with_suffix('.json').name}: "
          f"{args.meta_steps} meta-steps in {meta_seconds:.0f} s")


if __name__ == "__main__":
    main()

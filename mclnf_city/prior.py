"""θ_shared, where every block starts: its choice, its meta-learning, its continual update.

- The choice (`--pipeline.prior`): the prior bundled with the package for this architecture
  (meta-learned on generated cities, `mclnf_city/priors`), the architecture's seeded default
  init, or a file. The store records the prior a city started from; a resumed or evaluated
  run keeps the store's.
- Meta-learning (`--pipeline.meta.meta-steps`): outer steps of Reptile / (FO)MAML with the
  capture's blocks as tasks (`mclnf_city/meta.py` holds the updates), before the stream.
- Meta-continual (`--pipeline.meta.continual`): θ moves towards every finished block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Sequence, Tuple

import torch
from rich.progress import track

from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city import distributed
from mclnf_city.fields import BlockField, BlockFieldSpec
from mclnf_city.meta import meta_step
from mclnf_city.store import DONE, CityStore, StoreError, load_checked

Params = Dict[str, torch.Tensor]


@dataclass
class MetaLearningConfig:
    """Meta-training of θ_shared on the capture's own blocks (tasks), before the stream."""

    meta_steps: int = 0
    """Outer (meta) steps; 0 streams straight from the prior."""
    algorithm: Literal["reptile", "fomaml", "maml"] = "reptile"
    """reptile (first order, cheap), fomaml, or maml (second order through the inner SGD loop)."""
    inner_steps: int = 8
    """Adaptation steps per task (each on its own batch of the block's rays)."""
    inner_lr: float = 1e-2
    """Inner learning rate (Adam for reptile, SGD for fomaml/maml)."""
    outer_lr: float = 0.5
    """Reptile's step size ε, or the (FO)MAML outer learning rate β."""
    tasks_per_batch: int = 2
    """Blocks per outer step."""
    seed: int = 0
    """Seed of the task and ray draws."""
    fisher_weighting: bool = False
    """Weight each ray's inner-loop loss by its FIM-NeRF score, as --pipeline.fisher.loss-weighting does while a block trains (within --pipeline.fisher.weight-range): Fisher-weighted samples where the paper puts them, in the meta-learning."""
    continual: bool = False
    """Meta-continual: after each block finishes, move θ_shared towards its weights (a Reptile step), so later blocks start from what earlier ones learned."""
    continual_epsilon: float = 0.2
    """Step size of the meta-continual update θ ← θ + ε (φ_block − θ)."""

    def check(self) -> None:
        if self.fisher_weighting and self.meta_steps == 0:
            raise ValueError("--pipeline.meta.fisher-weighting weights the rays of meta-learning: set --pipeline.meta.meta-steps > 0")


# Package data, so that a wheel install finds them too (assets/priors links here).
PRIOR_DIR = Path(__file__).resolve().parent / "priors"


def prior_key(spec: BlockFieldSpec) -> str:
    """Name of the bundled prior of an architecture: the fields that shape θ_shared."""
    s = spec
    return (
        f"blockfield-L{s.num_levels}-R{s.base_res}-{s.max_res}-T{s.log2_hashmap_size}-F{s.features_per_level}"
        f"-H{s.hidden_dim}-G{s.geo_feat_dim}-C{s.hidden_dim_color}-A{s.appearance_embedding_dim}-S{s.far_field_hidden_dim}"
    )


def bundled_prior_path(spec: BlockFieldSpec) -> Path:
    return PRIOR_DIR / f"{prior_key(spec)}.pt"


def initial_prior(asked: str, spec: BlockFieldSpec, seed: int) -> Tuple[Dict[str, torch.Tensor], str]:
    """The prior --pipeline.prior names ('bundled', 'random' or a path), and where it came from."""
    if asked == "bundled":
        path = bundled_prior_path(spec)
        if path.exists():
            return load_checked(path, None, f"bundled prior {path}"), f"bundled prior {path.name}"
        CONSOLE.print(f"[yellow]no bundled prior for this architecture ({path.name}): starting from the seeded init")
        asked = "random"
    if asked == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return BlockField(spec, num_images=1).prior_state(), f"default init, seed {seed}"  # capture-independent
    path = Path(asked)
    if not path.exists():
        raise FileNotFoundError(f"--pipeline.prior {asked}: no such file (or use 'bundled' / 'random')")
    return load_checked(path, None, f"prior {path}"), f"prior file {path}"


def prior_meta(store: CityStore) -> Dict[str, Any]:
    """What the store records of how its prior was made (meta-training, continual updates)."""
    return (store.manifest.get("prior") or {}).get("meta") or {}


def resolve_prior(store: CityStore, asked: str, spec: BlockFieldSpec, seed: int, rank: int, world_size: int) -> Params:
    """θ_shared of a run: the store's (a resumed or evaluated run keeps its own), else the prior
    `asked` names, recorded in the store first (by rank 0; the other processes read it)."""

    check = BlockField(spec, num_images=1)  # load_prior checks a state against the architecture

    def record() -> Params:
        state, source = initial_prior(asked, spec, seed)
        check.load_prior(state, source=source)
        store.write_prior(state, source=source)
        CONSOLE.print(f"[bold]θ_shared[/bold]: {source}")
        return state

    if world_size > 1:
        if rank == 0 and not store.manifest.get("prior"):
            record()
        distributed.barrier()
        store.refresh()
    if not store.manifest.get("prior"):
        return record()
    state = store.load_prior()
    check.load_prior(state, source=f"prior in {store.root}")
    if asked not in ("bundled", "random") and not prior_meta(store):
        given = load_checked(Path(asked), None, f"prior {asked}")
        if set(given) != set(state) or any(not torch.equal(given[k], v) for k, v in state.items()):
            raise StoreError(f"{store.root} was started from another prior ({store.manifest['prior']['source']})")
    return state


def record_meta_trained(store: CityStore, theta: Params, cfg: MetaLearningConfig, rank: int, world_size: int) -> None:
    """Store a meta-trained θ_shared (rank 0 writes; every process then reads the store)."""
    source = f"meta-trained on {store.manifest['info'].get('data')}: {cfg.algorithm}, {cfg.meta_steps} steps, from {store.manifest['prior']['source']}"
    if world_size > 1:
        source += f", {world_size} processes"
    settings = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    if rank == 0:
        store.write_prior(theta, source=source, meta={"meta_trained": settings, "processes": world_size})
    distributed.barrier()
    store.refresh()
    CONSOLE.print(f"[bold]θ_shared[/bold] {source}")


def absorb_finished_blocks(store: CityStore, theta: Params, order: Sequence[int], epsilon: float) -> Params:
    """Meta-continual: θ ← θ + ε (φ_b − θ) for every finished block of `order` not absorbed yet,
    in order; the result is stored as the prior (with the blocks absorbed) and returned."""
    meta = dict(prior_meta(store))
    absorbed = list(meta.get("continual_absorbed", []))
    todo = [b for b in order if store.status(b) == DONE and b not in absorbed]
    if not todo:
        return theta
    for b in todo:
        phi = store.load_block(b)
        theta = {k: v + epsilon * (phi[k].to(v) - v) for k, v in theta.items()}
        absorbed.append(b)
    meta["continual_absorbed"] = absorbed
    source = store.manifest["prior"]["source"].split(" + meta-continual")[0] + f" + meta-continual (ε {epsilon}) on blocks {absorbed}"
    store.write_prior(theta, source=source, meta=meta)
    return theta


def learn_prior(tasks: List[Tuple[Any, int]], prior: Params, cfg: MetaLearningConfig) -> Params:
    """cfg.meta_steps outer steps of cfg.algorithm from `prior`. A task is (pipeline, block): the
    pipeline's `task_loss(params, block, draw)` is the block's photometric loss."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * distributed.rank())  # each process draws its own tasks
    theta = {k: v.clone() for k, v in prior.items()}
    for pipeline, _ in tasks:
        pipeline.model.train()
    draw = 10_000_000  # ray draws of meta-training never coincide with the stream's steps

    def loss(_module, params, batch):
        pipeline, b, step = batch
        return pipeline.task_loss(params, b, step)

    started = time.time()
    for step in track(range(cfg.meta_steps), description=f"Meta-training θ_shared ({cfg.algorithm})"):
        if not CONSOLE.is_terminal and step % max(1, cfg.meta_steps // 10) == 0:  # progress in logs too
            CONSOLE.print(f"meta-training step {step}/{cfg.meta_steps} ({time.time() - started:.0f} s)")
        batch_tasks = []
        for _ in range(cfg.tasks_per_batch):
            pipeline, b = tasks[int(torch.randint(len(tasks), (1,), generator=gen))]
            support = [(pipeline, b, draw + i) for i in range(cfg.inner_steps)]
            batch_tasks.append((support, (pipeline, b, draw + cfg.inner_steps)))
            draw += cfg.inner_steps + 1
        theta = meta_step(
            None, theta, batch_tasks, loss, cfg.algorithm, cfg.inner_lr, cfg.outer_lr,
            inner_optimizer="adam" if cfg.algorithm == "reptile" else "sgd",
        )
        # The outer update is linear in the tasks' contributions: the mean of the processes'
        # updated θ is the update of all their tasks together (identical θ on every rank).
        theta = distributed.average_across_ranks(theta)
    for pipeline, _ in tasks:
        pipeline.stream.deactivate()
    return theta

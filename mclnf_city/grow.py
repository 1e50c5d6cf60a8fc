"""Growing a trained city: new blocks for a neighbouring capture, new versions of re-captured blocks.

    mclnf-process new_photos grown --register-into city_capture          # new frames in the city frame
    ns-train mclnf-city --data grown --pipeline.grow-city OLD_RUN/city    # trains only the new blocks
    ns-train mclnf-city --data grown2 --pipeline.grow-city RUN/city --pipeline.recapture-blocks 3

A grown run has a store of its own (`<run>/city`), seeded from the old city's store:

- **Blocks and prior** are hard-linked (copied across filesystems): the same bytes, checked
  against their SHA-256, never rewritten (every store write makes a new file and renames it).
  The old run and its store stay as they were and keep working.
- **Partition**: the old grid with cells appended where the newest photos look beyond the
  city (same block size, height range and overlap; `BlockPartition.cells`), so old blocks keep
  their ids and boxes. New blocks start from the city's stored prior θ_shared.
- **Frame**: nerfstudio's dataparser re-centres, re-orients and rescales poses from all the
  cameras it reads, so the grown capture would land in another frame than the one the
  blocks were trained in. The city records the transform and scale its dataparser applied
  (`info.dataparser_frame` in the manifest); a grown run parses its capture with exactly those
  (same float operations), so the old cameras come out bit-identical and old blocks render
  their views as before.
- **Re-capture** (a run of its own: it adds no block): a block listed in `--pipeline.recapture-blocks` keeps serving its current
  version (status `done`, its file) while the new version trains; its manifest entry carries
  `recapture: {version, status}`. Writing the new version (`blocks/block_NNN_vK.pt`) and
  switching the entry to it is one manifest update, the commit point; earlier versions stay
  on disk and are listed under `versions`. Only the training pipeline of the grown run
  (`GrowingStore`) sees the block as not done; ns-viewer / ns-eval / mclnf-export read the
  store as it is, so a run stopped mid re-capture leaves the old version in service.

The pipeline calls four functions (`city_frame`, `open_store`, `frame_info`, `prepare_run`);
everything else about growing lives here.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from nerfstudio.utils.rich_utils import CONSOLE

from mclnf_city.partition import BlockPartition, too_few_rays, visit_order
from mclnf_city.store import DONE, EMPTY, WAITING, CityStore, GrowingStore, StoreError

FRAME_KEY = "dataparser_frame"
MIN_FOOTPRINT = 2  # a grid cell becomes a block when at least this many footprint points of new cameras fall in it


class GrowError(StoreError):
    """The city cannot be grown as asked (the message says why and what to do)."""


# ------------------------------------------------------------------ the dataparser frame
@contextmanager
def _orientation(make) -> Iterator[None]:
    """Swap nerfstudio's `auto_orient_and_center_poses` (both of its dataparsers call it through
    the module) for `make(original)` while a capture is parsed."""
    from nerfstudio.cameras import camera_utils

    original = camera_utils.auto_orient_and_center_poses
    camera_utils.auto_orient_and_center_poses = make(original)
    try:
        yield
    finally:
        camera_utils.auto_orient_and_center_poses = original


def record_frame(dataparser) -> Dict[str, Any]:
    """Parse a capture once more, recording the transform and scale the dataparser gives its poses."""
    calls = []

    def make(original):
        def recording(poses, *args, **kwargs):
            oriented, transform = original(poses, *args, **kwargs)
            calls.append((poses.clone(), oriented.clone(), transform.clone()))
            return oriented, transform

        return recording

    with _orientation(make):
        outputs = dataparser.get_dataparser_outputs(split="train")
    cfg = dataparser.config
    if len(calls) != 1:
        return {"dataparser": type(cfg).__name__, "reproducible": False, "why": f"{len(calls)} orientation calls in one parse"}
    poses, oriented, transform = calls[0]
    scale = 1.0  # the same operations as nerfstudio's dataparsers
    if cfg.auto_scale_poses:
        scale /= float(torch.max(torch.abs(oriented[:, :3, 3])))
    scale *= cfg.scale_factor
    same_poses = torch.equal(transform @ poses, oriented)
    same_scale = float(outputs.dataparser_scale) == scale
    frame = {
        "dataparser": type(cfg).__name__,
        "transform": transform.tolist(),
        "scale": scale,
        "dataparser_transform": outputs.dataparser_transform.tolist(),
        "dataparser_scale": float(outputs.dataparser_scale),
        "reproducible": bool(same_poses and same_scale),
    }
    if not same_poses:
        frame["why"] = "the orientation method changes poses beyond the transform it returns (use --orientation-method up, vertical or none)"
    elif not same_scale:
        frame["why"] = "the capture applies an extra scale (applied_scale in transforms.json)"
    return frame


@contextmanager
def fixed_frame(dataparser_config, frame: Dict[str, Any]) -> Iterator[None]:
    """Parse with the recorded transform and scale instead of ones estimated from the cameras."""
    transform = torch.tensor(frame["transform"], dtype=torch.float32)

    def make(original):
        def fixed(poses, *args, **kwargs):
            t = transform.to(poses)
            return t @ poses, t.clone()  # nerfstudio's own operation: transform @ poses

        return fixed

    saved = (dataparser_config.auto_scale_poses, dataparser_config.scale_factor)
    dataparser_config.auto_scale_poses, dataparser_config.scale_factor = False, frame["scale"]
    try:
        with _orientation(make):
            yield
    finally:
        dataparser_config.auto_scale_poses, dataparser_config.scale_factor = saved


def frame_info(dataparser) -> Dict[str, Any]:
    """What a new city records in its manifest's `info` so that it can grow later (never fails:
    a dataparser whose frame cannot be recorded only makes the city unable to grow, and says why)."""
    cfg = dataparser.config
    if not (hasattr(cfg, "auto_scale_poses") and hasattr(cfg, "scale_factor")):
        return {FRAME_KEY: {"dataparser": type(cfg).__name__, "reproducible": False, "why": "this dataparser has no pose scale options"}}
    try:
        return {FRAME_KEY: record_frame(dataparser)}
    except Exception as e:  # noqa: BLE001 - recording is a bonus; training must not depend on it
        return {FRAME_KEY: {"dataparser": type(cfg).__name__, "reproducible": False, "why": f"{type(e).__name__}: {e}"}}


def find_frame(config) -> Dict[str, Any]:
    """The frame a grown run parses its capture in: this run's store's, else the old city's
    (recorded, or for a city made before growing existed, its capture parsed again)."""
    own = Path(config.store_dir) / "manifest.json" if config.store_dir is not None else None
    if own is not None and own.exists():
        frame = CityStore(own.parent).manifest.get("info", {}).get(FRAME_KEY)
        where = own
    else:
        old = CityStore(Path(config.grow_city))
        if not old.exists:
            raise GrowError(f"{old.manifest_path}: no trained city to grow (--pipeline.grow-city takes <old run>/city)")
        frame, where = old.manifest["info"].get(FRAME_KEY), old.manifest_path
        if frame is None:
            frame = _frame_of_old_capture(old, config)
    if frame is None:
        raise GrowError(f"{where}: no dataparser frame recorded")
    used = type(config.datamanager.dataparser).__name__
    if frame.get("dataparser") != used:
        raise GrowError(
            f"{where}: the city was trained with the {frame.get('dataparser')} dataparser, this run uses {used}; "
            "grow it with the same dataparser (and options) it was trained with"
        )
    if not frame.get("reproducible", False):
        raise GrowError(f"{where}: the city's dataparser frame cannot be reproduced: {frame.get('why')}")
    return frame


def _frame_of_old_capture(old: CityStore, config) -> Dict[str, Any]:
    """A city made before growing existed: parse its capture again with this run's dataparser
    options, and check the result against the old run's dataparser_transforms.json."""
    data = Path(old.manifest["info"].get("data", ""))
    if not data.exists():
        raise GrowError(
            f"{old.manifest_path} does not record its dataparser frame (made before growing existed) and its capture "
            f"{data} is gone; put the capture back at that path to grow this city"
        )
    cfg = copy.deepcopy(config.datamanager.dataparser)
    cfg.data = data
    frame = record_frame(cfg.setup())
    saved = old.root.parent / "dataparser_transforms.json"
    if saved.exists():
        recorded = json.loads(saved.read_text())
        if recorded["transform"] != frame["dataparser_transform"] or float(recorded["scale"]) != frame["dataparser_scale"]:
            raise GrowError(
                f"{saved}: the old run parsed {data} into another frame than this run's dataparser options do; "
                "pass the dataparser options the old run used (see its config.yml)"
            )
    return frame


def _own_growth(config) -> Optional[Dict[str, Any]]:
    """The `grow` record of this run's store, when the run is a grown city's (resumed or served)."""
    if config.store_dir is None or not (Path(config.store_dir) / "manifest.json").exists():
        return None
    return CityStore(Path(config.store_dir)).manifest.get("grow")


@contextmanager
def city_frame(config) -> Iterator[None]:
    """Around the data manager's setup: a grown run parses its capture in the city's frame."""
    if config.grow_city is None and _own_growth(config) is None:
        yield
        return
    with fixed_frame(config.datamanager.dataparser, find_frame(config)):
        yield


def open_store(config, outputs, training: bool) -> CityStore:
    """The pipeline's store: as before for a city that never grew; else this run's grown store,
    seeded from --pipeline.grow-city on the first training start. A grown run resumed with
    --load-dir (or served by ns-viewer, ns-eval, ...) is recognised by its manifest."""
    own = CityStore(config.store_dir)
    grown = own.manifest.get("grow") if own.exists else None
    if config.grow_city is None and grown is None:
        if config.recapture_blocks:
            raise GrowError("--pipeline.recapture-blocks needs --pipeline.grow-city (the city whose blocks are re-captured)")
        return own
    if config.meta.meta_steps > 0:
        raise GrowError("a grown city trains its new blocks from its stored prior: --pipeline.meta.meta-steps does not apply")
    if own.exists:
        if grown is None:
            raise GrowError(f"{own.manifest_path}: not a grown city, but --pipeline.grow-city is set")
        if training and config.grow_city is not None and Path(grown["from"]).resolve() != Path(config.grow_city).resolve():
            raise GrowError(f"{own.manifest_path}: grown from {grown['from']}, not from --pipeline.grow-city {config.grow_city}")
        if config.recapture_blocks and list(grown["recapture"]) != list(config.recapture_blocks):
            raise GrowError(f"{own.manifest_path}: re-captures blocks {grown['recapture']}, not --pipeline.recapture-blocks {list(config.recapture_blocks)}")
        return GrowingStore(config.store_dir) if training else own
    old_root = Path(config.grow_city)
    if old_root.resolve() == Path(config.store_dir).resolve():
        raise GrowError(f"--pipeline.grow-city {old_root} is this run's own store; give the store of the run that trained the city")
    if not training:
        return own  # nothing trained here yet: the pipeline says so
    store = GrowingStore(config.store_dir)
    seed_store(store, CityStore(old_root), config, outputs)
    return store


def capture_index_of_images(data: Path, image_filenames: Sequence[Path]) -> Optional[torch.Tensor]:
    """[N] the capture each image came from ("capture" in transforms.json; 0 when unmarked), or
    None when the capture has no marks (not grown with mclnf-process --register-into)."""
    transforms = Path(data) / "transforms.json" if Path(data).is_dir() else Path(data)
    if not transforms.exists():
        return None
    frames = json.loads(transforms.read_text()).get("frames", [])
    marks = {Path(f["file_path"]).name: int(f.get("capture", 0)) for f in frames}
    if not any(marks.values()):
        return None
    return torch.tensor([marks.get(Path(n).name, 0) for n in image_filenames])


def camera_footprint(partition: BlockPartition, camera_to_worlds: torch.Tensor) -> torch.Tensor:
    """[2N, 2] ground points (city x, y) the cameras stand on and look at.

    The look point is where the principal ray meets the middle of the height range, at most 1.5
    block edges away on the ground (a camera looking level looks that far ahead; one looking up
    at the sky only stands).
    """
    c2w = camera_to_worlds.double()
    o = partition.to_city(c2w[:, :3, 3])
    f = partition.dirs_to_city(-c2w[:, :3, 2])
    nx, ny = partition.grid
    edge = 0.5 * (float(partition.x_edges[-1] - partition.x_edges[0]) / nx + float(partition.y_edges[-1] - partition.y_edges[0]) / ny)
    mid = 0.5 * (partition.z_range[0] + partition.z_range[1])
    flat = f[:, :2].norm(dim=-1).clamp_min(1e-6)
    t_max = 1.5 * edge / flat
    level = f[:, 2].abs() < 0.1
    t_mid = (mid - o[:, 2]) / torch.where(level, torch.ones_like(f[:, 2]), f[:, 2])
    t = torch.where(level, t_max, torch.where(t_mid > 0, t_mid, torch.zeros_like(t_mid)))
    look = o + torch.minimum(t, t_max)[:, None] * f
    return torch.cat([o[:, :2], look[:, :2]])


def _lattice_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Grid column of each value on the grid extended beyond its edges by its end columns' widths."""
    n = len(edges) - 1
    inside = torch.searchsorted(edges, values.contiguous(), right=True) - 1
    below = torch.floor((values - edges[0]) / (edges[1] - edges[0])).long()
    above = n + torch.floor((values - edges[-1]) / (edges[-1] - edges[-2])).long()
    return torch.where(values < edges[0], below, torch.where(values >= edges[-1], above, inside))


def grow_partition(partition: BlockPartition, footprint: torch.Tensor, min_count: int = MIN_FOOTPRINT) -> Tuple[BlockPartition, List[Tuple[int, int]]]:
    """The partition extended by every grid cell holding at least `min_count` footprint points
    (city x, y) and no block yet. Old edges, cells and ids are kept exactly; new cells take the
    widths of the grid's end columns and rows. Returns the new partition and the cells (in the
    new grid's indices) that hold at least `min_count` points, old ones included."""
    xe, ye = partition.x_edges, partition.y_edges
    ix, iy = _lattice_index(footprint[:, 0], xe), _lattice_index(footprint[:, 1], ye)
    counts: Dict[Tuple[int, int], int] = {}
    for cell in zip(ix.tolist(), iy.tolist()):  # insertion order = first seen
        counts[cell] = counts.get(cell, 0) + 1
    seen = [c for c, n in counts.items() if n >= min_count]
    old_cells = [tuple(partition.cell(b)) for b in range(partition.num_blocks)]
    new_cells = [c for c in seen if c not in old_cells]
    nx, ny = partition.grid
    left = max([0] + [-c[0] for c in new_cells])
    right = max([0] + [c[0] - (nx - 1) for c in new_cells])
    below = max([0] + [-c[1] for c in new_cells])
    above = max([0] + [c[1] - (ny - 1) for c in new_cells])

    def extend(edges: torch.Tensor, before: int, after: int) -> torch.Tensor:
        lo, hi = edges[1] - edges[0], edges[-1] - edges[-2]
        head = [edges[0] - lo * m for m in range(before, 0, -1)]
        tail = [edges[-1] + hi * m for m in range(1, after + 1)]
        return torch.cat([torch.stack(part) for part in (head, [*edges], tail) if part])

    shift = lambda c: (c[0] + left, c[1] + below)  # noqa: E731
    grown = BlockPartition(
        partition.rotation,
        partition.origin,
        extend(xe, left, right),
        extend(ye, below, above),
        partition.z_range,
        partition.overlap,
        list(partition.stream_order),
        [shift(c) for c in old_cells] + [shift(c) for c in new_cells],
    )
    return grown, [shift(c) for c in seen]


def newest_train_images(pipeline_outputs, data: Path) -> Tuple[Optional[torch.Tensor], int]:
    """Indices of the training images of the newest capture, and its number (None, 0 if unmarked)."""
    marks = capture_index_of_images(data, pipeline_outputs.image_filenames)
    if marks is None:
        return None, 0
    newest = int(marks.max())
    return torch.nonzero(marks == newest).flatten(), newest


def seed_store(store: CityStore, old: CityStore, config, outputs) -> None:
    """Make a grown run's store: old blocks and prior linked, partition grown, one manifest write."""
    if not old.exists:
        raise GrowError(f"{old.manifest_path}: no trained city to grow (--pipeline.grow-city takes <old run>/city)")
    old.verify()  # every done block file against its checksum
    partition = old.partition()
    n_old = partition.num_blocks
    unfinished = [b for b in range(n_old) if old.status(b) not in (DONE, EMPTY)]
    if unfinished:
        raise GrowError(f"{old.root}: block(s) {unfinished} not finished; resume that run to finish the city before growing it")
    recapture = [int(b) for b in config.recapture_blocks]
    for b in recapture:
        if not 0 <= b < n_old or old.status(b) != DONE:
            state = old.status(b) if 0 <= b < n_old else "not in the city"
            raise GrowError(f"--pipeline.recapture-blocks: block {b} is {state} in {old.manifest_path}; only finished blocks can be re-captured")
    data = Path(config.datamanager.data or config.datamanager.dataparser.data)
    c2w = outputs.cameras.camera_to_worlds
    newest, capture = newest_train_images(outputs, data)
    if newest is None:
        CONSOLE.print(f"[yellow]{data}: frames carry no \"capture\" marks; every camera counts as new when growing the city")
        newest = torch.arange(len(c2w))
    if len(newest) == 0:
        raise GrowError(f"{data}: no training image of the newest capture ({capture})")
    if recapture:  # a re-capture run retrains the listed blocks and adds none
        grown, seen = BlockPartition.from_dict(partition.to_dict()), []
    else:
        grown, seen = grow_partition(partition, camera_footprint(partition, c2w[newest]))
    old_cells = [tuple(grown.cell(b)) for b in range(n_old)]
    new_blocks = list(range(n_old, grown.num_blocks))
    revived = [b for b in range(n_old) if old.status(b) == EMPTY and old_cells[b] in seen]  # empty before, now looked at
    candidates = set(new_blocks + revived)
    order = [b for b in visit_order(grown, c2w[newest]) if b in candidates]
    grown.stream_order = list(partition.stream_order) + [b for b in order if b >= n_old] + [b for b in new_blocks if b not in order]
    if not order and not recapture:
        raise GrowError(
            f"{data}: the newest photos look at no place outside the city {old.root}, so there is no block to add; "
            "to retrain blocks they show, list them with --pipeline.recapture-blocks"
        )
    frame = find_frame(config)
    blocks: Dict[int, Dict[str, Any]] = {}
    for b in range(n_old):
        entry = copy.deepcopy(old.block(b))
        entry.pop("recapture", None)  # an unfinished re-capture of the old city is not carried over
        if b in revived:
            entry = {"status": WAITING}
        if b in recapture:
            entry["recapture"] = {"version": int(entry.get("version", 1)) + 1, "status": WAITING}
        blocks[b] = entry
    store.create(
        grown,
        {},
        {"data": str(data), "num_train_images": len(c2w), "steps_per_block": config.steps_per_block, FRAME_KEY: frame},
        blocks=blocks,
        prior=copy.deepcopy(old.manifest.get("prior")),
        grow={
            "from": str(old.root.resolve()),
            "from_info": {k: v for k, v in old.manifest["info"].items() if k != FRAME_KEY},
            "capture": capture,
            "new_blocks": new_blocks,
            "revived_blocks": revived,
            "recapture": recapture,
            "train_order": recapture + order,
            "created_at": time.time(),
        },
        files_from=old,
    )
    added = ", ".join(f"{b} (cell {grown.cell(b)})" for b in new_blocks) or "none"
    CONSOLE.print(
        f"[bold]growing the city[/bold] {old.root} -> {store.root}: {n_old} blocks kept, new blocks {added}"
        + (f", empty blocks now seen {revived}" if revived else "")
        + (f", re-capturing {recapture}" if recapture else "")
    )


def prepare_run(store: CityStore, config, datamanager, masks: Dict[int, torch.Tensor], training: bool) -> Optional[List[int]]:
    """A grown city's run: the blocks it trains, in order (None: not a grown city's run). New
    blocks with too few rays are marked empty; re-captured blocks learn from the newest
    capture's photos only (`masks`, the blocks' image masks, follow)."""
    grow = store.manifest.get("grow")
    if grow is None:
        return None
    if training:
        dm = datamanager
        per_block = dm.rays_per_block()
        rays = {b: per_block.get(b, 0) for b in grow["train_order"] if b not in grow["recapture"] and store.status(b) == WAITING}
        for b, why in too_few_rays(rays, config.min_rays_per_block).items():
            CONSOLE.print(f"[yellow]block {b} skipped: {why}")
            store.set_status(b, EMPTY, reason=why)
        if grow["recapture"]:
            newest, capture = newest_train_images(dm.train_dataparser_outputs, Path(store.manifest["info"]["data"]))
            if newest is None:
                CONSOLE.print("[yellow]the capture has no \"capture\" marks: re-captured blocks train on every image")
            for b in grow["recapture"]:
                if newest is not None:
                    dm.keep_images(b, newest)
                    masks[b] = dm.block_images(b)
                rays = dm.rays_per_block()[b]
                if rays < config.min_rays_per_block and store.status(b) != DONE:
                    raise GrowError(
                        f"block {b}: only {rays} training rays of the newest photos (capture {capture}) cross it "
                        f"(--pipeline.min-rays-per-block {config.min_rays_per_block}); photograph it again or leave it out"
                    )
    return list(grow["train_order"])

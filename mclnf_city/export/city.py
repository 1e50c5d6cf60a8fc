"""Loading a trained city for export (nerfstudio's `eval_setup`), its finished blocks, and the
output frame (the capture's own, undoing nerfstudio's dataparser transform, or nerfstudio's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from mclnf_city.store import CityStore, StoreError


class ExportError(RuntimeError):
    """Bad input to mclnf-export: the message names the file or option and the problem."""


@dataclass
class OutputFrame:
    """nerfstudio (dataparser) frame <-> output frame: p_ns = scale * (R p_out + t)."""

    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]
    scale: float
    name: str  # "capture" or "nerfstudio"

    @classmethod
    def identity(cls) -> "OutputFrame":
        return cls(np.eye(3), np.zeros(3), 1.0, "nerfstudio")

    @classmethod
    def from_dataparser_transforms(cls, path: Path) -> "OutputFrame":
        data = json.loads(Path(path).read_text())
        transform = np.asarray(data["transform"], dtype=np.float64)
        return cls(transform[:, :3], transform[:, 3], float(data["scale"]), "capture")

    def to_output(self, points_ns: np.ndarray) -> np.ndarray:
        return (points_ns / self.scale - self.translation) @ self.rotation  # R orthonormal: R^-1 = R^T

    def to_nerfstudio(self, points_out: np.ndarray) -> np.ndarray:
        return self.scale * (points_out @ self.rotation.T + self.translation)

    def dirs_to_output(self, directions_ns: np.ndarray) -> np.ndarray:
        return directions_ns @ self.rotation


@dataclass
class LoadedCity:
    config: object
    pipeline: object
    model: object
    partition: object
    store: CityStore
    frame: OutputFrame


def load_city(config_path: Path, frame: str = "capture") -> LoadedCity:
    """Load a finished (or partly finished) city with nerfstudio's eval_setup, after checking it."""
    import yaml

    config_path = Path(config_path)
    if not config_path.is_file():
        raise ExportError(f"--load-config {config_path}: no such file")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad config
        raise ExportError(f"--load-config {config_path}: cannot read the config: {e}") from e
    store_dir = getattr(getattr(config, "pipeline", None), "store_dir", None)
    if store_dir is None:
        raise ExportError(f"{config_path}: not an mclnf-city run (no pipeline.store_dir in the config)")
    try:
        store = CityStore(Path(store_dir))
    except StoreError as e:
        raise ExportError(str(e)) from e
    if not store.exists:
        raise ExportError(f"{store.manifest_path}: missing, this run has no trained city (was it trained to the end of a block?)")
    if not store.done_blocks():
        raise ExportError(f"{store.manifest_path}: no block is finished yet, nothing to export")
    ckpt_dir = config.get_checkpoint_dir()
    if not ckpt_dir.is_dir() or not list(ckpt_dir.glob("step-*.ckpt")):
        raise ExportError(f"{ckpt_dir}: no checkpoint (step-*.ckpt) found for {config_path}")

    from nerfstudio.utils.eval_utils import eval_setup

    try:
        config, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    except SystemExit as e:
        raise ExportError(f"{config_path}: nerfstudio could not load the run (exit {e.code})") from e
    except (StoreError, FileNotFoundError, ValueError) as e:
        raise ExportError(f"{config_path}: {e}") from e
    pipeline.eval()
    transforms = config_path.parent / "dataparser_transforms.json"
    if frame == "capture":
        if not transforms.exists():
            raise ExportError(f"{transforms}: missing, cannot write in the capture frame (use --frame nerfstudio)")
        out_frame = OutputFrame.from_dataparser_transforms(transforms)
    else:
        out_frame = OutputFrame.identity()
    return LoadedCity(config, pipeline, pipeline.model, pipeline.partition, pipeline.store, out_frame)


def finished_blocks(city: LoadedCity, asked: Optional[Sequence[int]]) -> List[int]:
    """The blocks to export: `asked` (each must exist and be finished), else every finished block."""
    n = city.partition.num_blocks
    done = sorted(city.store.done_blocks())
    if asked is None:
        unfinished = [b for b in range(n) if b not in done]
        if unfinished:
            statuses = ", ".join(f"{b} ({city.store.status(b)})" for b in unfinished)
            print(f"[mclnf-export] blocks not finished, left out: {statuses}")
        return done
    if len(asked) == 0:
        raise ExportError("--blocks: empty list (give block ids, or leave --blocks out for every finished block)")
    for b in asked:
        if not 0 <= b < n:
            raise ExportError(f"--blocks: block {b} does not exist (the city has blocks 0..{n - 1})")
        if b not in done:
            raise ExportError(f"--blocks: block {b} is not finished (status {city.store.status(b)}) in {city.store.manifest_path}")
    return sorted(set(asked))


def city_to_world(partition, points_city: np.ndarray) -> np.ndarray:
    """City frame -> nerfstudio world frame (the partition's frame is a rotation about its origin)."""
    rotation = partition.rotation.numpy()
    return points_city @ rotation + partition.origin.numpy()

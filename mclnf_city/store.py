"""The city store: finished blocks on disk, one file each, plus a manifest.

Layout of ``<run>/city/``::

    manifest.json      partition, stream order, per-block status / metrics / checksums
    prior-<sha>.pt     θ_shared, the initialisation every block starts from
    blocks/block_007.pt
    pixels/            which training pixels each block learns from (`block_pixels.py`)

Every file is written under a new name first and the manifest update that names it is the
commit point, so a reader holding an older manifest still finds the files it names (the
prior before the current one is kept for that reader). Every path read from a manifest must
lie inside the store (`CityStore.path`): a crafted manifest reaches nothing beyond it.

Every write is atomic (temp file, fsync, rename), so a killed run loses at most the
block it was training. Every read checks the SHA-256 recorded in the manifest, and
loading is strict: a missing, corrupted or mismatching block is a loud `StoreError`.

Several processes may share a store (block-parallel training): each block file has one
writer (the rank training that block), and every manifest change is a read-modify-write
of the file on disk under an exclusive lock (`manifest.lock`, fcntl), so no process
overwrites what another recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from mclnf_city.files import atomic_write_bytes, link_or_copy
from mclnf_city.partition import BlockPartition

MANIFEST_VERSION = 1
WAITING, ACTIVE, DONE, EMPTY = "waiting", "active", "done", "empty"


class StoreError(RuntimeError):
    """The block store on disk is missing, corrupted or inconsistent with the run."""


def tensor_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_checked(path: Path, expected_sha: Optional[str], what: str) -> Dict[str, torch.Tensor]:
    """torch.load a state dict (weights only) after checking its checksum."""
    if not path.exists():
        raise StoreError(f"{what}: file missing: {path}")
    data = path.read_bytes()
    if expected_sha is not None and sha256(data) != expected_sha:
        raise StoreError(f"{what}: file corrupted (checksum mismatch): {path}")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise StoreError(f"{what}: cannot read {path}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError(f"{what}: {path} does not hold a state dict of tensors")
    return state


class CityStore:
    """Finished blocks and the prior of one city, on disk."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: Dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest from disk (other processes may have finished blocks meanwhile)."""
        if not self.manifest_path.exists():
            return
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"manifest is not valid JSON: {self.manifest_path}: {e}") from e
        if manifest.get("version") != MANIFEST_VERSION:
            raise StoreError(f"unsupported manifest version {manifest.get('version')} in {self.manifest_path}")
        self.manifest = manifest

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _update(self, change: Callable[[Dict[str, Any]], None]) -> None:
        """Apply `change` to the manifest as it is on disk now, and write it, under the lock."""
        with self._locked():
            self.refresh()
            change(self.manifest)
            atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=1).encode())

    @property
    def pixels_dir(self) -> Path:
        """The pixel index (`block_pixels.py`): which training pixels each block learns from.
        Derived from the capture and the partition, so it is rebuilt whenever they differ."""
        return self.root / "pixels"

    # ----- manifest -----
    @property
    def exists(self) -> bool:
        return bool(self.manifest)

    def create(
        self,
        partition: BlockPartition,
        empty_blocks: Dict[int, str],
        info: Dict[str, Any],
        blocks: Optional[Dict[int, Dict[str, Any]]] = None,
        prior: Optional[Dict[str, Any]] = None,
        grow: Optional[Dict[str, Any]] = None,
        files_from: Optional["CityStore"] = None,
    ) -> None:
        """Start a city: its partition, every block waiting (or empty, with the reason) unless
        `blocks` gives its entry. A grown city also carries its old city's prior record and
        files (linked from `files_from`) and what the growth is (`grow`). The manifest write is
        the commit point; partition.json is written beside it for people to read."""
        entries = {}
        for b in range(partition.num_blocks):
            if blocks is not None and b in blocks:
                entries[str(b)] = blocks[b]
            elif b in empty_blocks:
                entries[str(b)] = {"status": EMPTY, "reason": empty_blocks[b]}
            else:
                entries[str(b)] = {"status": WAITING}
        new = {
            "version": MANIFEST_VERSION,
            "partition": partition.to_dict(),
            "stream_order": list(partition.stream_order),
            "info": info,
            "prior": prior,
            "blocks": entries,
        }
        if grow is not None:
            new["grow"] = grow
        if files_from is not None:
            for rel in files_from.files():  # each checked to lie inside the old store
                link_or_copy(files_from.root / rel, self.root / rel)

        def change(manifest: Dict[str, Any]) -> None:
            if manifest:
                raise StoreError(f"a city already exists at {self.manifest_path}")
            manifest.update(new)

        self._update(change)
        partition.save(self.root / "partition.json")
        self.verify()

    def partition(self) -> BlockPartition:
        return BlockPartition.from_dict(self.manifest["partition"])

    def block(self, b: int) -> Dict[str, Any]:
        try:
            return self.manifest["blocks"][str(b)]
        except KeyError as e:
            raise StoreError(f"block {b} is not in the manifest {self.manifest_path}") from e

    def status(self, b: int) -> str:
        return self.block(b)["status"]

    def done_blocks(self):
        return [int(b) for b, e in self.manifest["blocks"].items() if e["status"] == DONE]

    def set_status(self, b: int, status: str, **fields: Any) -> None:
        """Set block b's status (and any other fields of its entry)."""
        self.block(b)  # a clear error for an unknown block
        self._update(lambda m: m["blocks"][str(b)].update(status=status, **fields))

    def update_metrics(self, b: int, key: str, metrics: Dict[str, float]) -> None:
        self.block(b)
        self._update(lambda m: m["blocks"][str(b)].setdefault("metrics", {}).__setitem__(key, metrics))

    # ----- files the manifest names -----
    def path(self, rel: str, what: str) -> Path:
        """The file a manifest entry names, refused unless it lies inside the store (no absolute
        path, no '..', no symlink out of it)."""
        inside = not Path(rel).is_absolute() and ".." not in Path(rel).parts
        if not inside or not (self.root / rel).resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"{what}: file {rel!r} named in {self.manifest_path} lies outside the store; refusing to use it")
        return self.root / rel

    def files(self) -> List[str]:
        """Every file the manifest names (prior and the one before it, blocks, earlier versions of
        re-captured blocks), as paths relative to the store, each checked to lie inside it."""
        named = []
        prior = self.manifest.get("prior") or {}
        named += [(prior[k], "prior") for k in ("file", "previous_file") if k in prior]
        for b, entry in sorted(self.manifest.get("blocks", {}).items(), key=lambda kv: int(kv[0])):
            named += [(entry["file"], f"block {b}")] if "file" in entry else []
            named += [(v["file"], f"block {b} version {v.get('version', '?')}") for v in entry.get("versions", []) if "file" in v]
        for rel, what in named:
            self.path(rel, what)
        return [rel for rel, _ in named]

    # ----- prior -----
    def write_prior(self, state: Dict[str, torch.Tensor], source: str, meta: Optional[Dict[str, Any]] = None) -> None:
        """Record θ_shared; `meta` holds the meta-learning settings when it was meta-trained here."""
        data = tensor_bytes(state)
        digest = sha256(data)
        rel = f"prior-{digest[:16]}.pt"
        atomic_write_bytes(self.root / rel, data)
        entry = {"file": rel, "sha256": digest, "source": source}
        if meta is not None:
            entry["meta"] = meta

        def change(manifest: Dict[str, Any]) -> None:  # the commit point
            before = manifest.get("prior") or {}
            if before.get("file") not in (None, rel):
                entry["previous_file"] = before["file"]
            manifest["prior"] = entry

        self._update(change)
        now = self.manifest.get("prior") or {}
        keep = {now.get("file"), now.get("previous_file")}  # what the manifest on disk names
        for old in self.root.glob("prior*.pt"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def load_prior(self) -> Dict[str, torch.Tensor]:
        entry = self.manifest.get("prior")
        if not entry:
            raise StoreError(f"no prior recorded in {self.manifest_path}")
        return load_checked(self.path(entry["file"], "prior"), entry["sha256"], "prior")

    # ----- blocks -----
    def write_block(self, b: int, state: Dict[str, torch.Tensor], steps: int, metrics: Dict[str, float], **fields: Any) -> None:
        """Write a finished block, then mark it done (the manifest is the commit point)."""
        self.block(b)
        data = tensor_bytes({k: v.detach().cpu().clone() for k, v in state.items()})
        rel = f"blocks/block_{b:03d}.pt"
        atomic_write_bytes(self.root / rel, data)

        def change(manifest: Dict[str, Any]) -> None:
            entry = manifest["blocks"][str(b)]
            entry.update(status=DONE, file=rel, sha256=sha256(data), steps=steps, finished_at=time.time(), **fields)
            entry.setdefault("metrics", {})["at_finish"] = metrics

        self._update(change)

    def load_block(self, b: int) -> Dict[str, torch.Tensor]:
        entry = self.block(b)
        if entry["status"] != DONE:
            raise StoreError(f"block {b} is not finished (status {entry['status']}) in {self.manifest_path}")
        return load_checked(self.path(entry["file"], f"block {b}"), entry["sha256"], f"block {b}")

    def verify(self) -> None:
        """Check every finished block file against its checksum (fast fail before a long job)."""
        for b in self.done_blocks():
            entry = self.block(b)
            path = self.path(entry["file"], f"block {b}")
            if not path.exists():
                raise StoreError(f"block {b}: file missing: {path}")
            if sha256(path.read_bytes()) != entry["sha256"]:
                raise StoreError(f"block {b}: file corrupted (checksum mismatch): {path}")


class GrowingStore(CityStore):
    """The store as the *training* pipeline of a grown run sees it: a block being re-captured
    is not done (so it trains), and writing it stores a new version (blocks/block_NNN_vK.pt);
    the old version stays in service until that one manifest write."""

    def _pending(self, b: int) -> Optional[Dict[str, Any]]:
        return self.block(b).get("recapture")

    def status(self, b: int) -> str:
        pending = self._pending(b)
        return pending["status"] if pending else super().status(b)

    def done_blocks(self):
        return [b for b in super().done_blocks() if not self._pending(b)]

    def set_status(self, b: int, status: str, **fields: Any) -> None:
        if not self._pending(b):
            return super().set_status(b, status, **fields)
        self._update(lambda m: m["blocks"][str(b)]["recapture"].update(status=status, **fields))

    def write_block(self, b: int, state: Dict[str, torch.Tensor], steps: int, metrics: Dict[str, float], **fields: Any) -> None:
        pending = self._pending(b)
        if not pending:
            return super().write_block(b, state, steps, metrics, **fields)
        version = int(pending["version"])
        data = tensor_bytes({k: v.detach().cpu().clone() for k, v in state.items()})
        rel = f"blocks/block_{b:03d}_v{version}.pt"
        atomic_write_bytes(self.root / rel, data)

        def change(manifest: Dict[str, Any]) -> None:  # the commit point: one manifest write
            entry = manifest["blocks"][str(b)]
            previous = {k: entry[k] for k in ("file", "sha256", "steps", "finished_at", "seconds", "metrics") if k in entry}
            previous["version"] = entry.get("version", 1)
            entry.setdefault("versions", []).append(previous)
            entry.pop("recapture")
            entry.update(status=DONE, file=rel, sha256=sha256(data), steps=steps, finished_at=time.time(), version=version, **fields)
            entry["metrics"] = {"at_finish": metrics}

        self._update(change)

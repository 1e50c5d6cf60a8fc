"""File I/O every room shares: atomic writes, link-or-copy, staged folders, PLY and PNG.

A reader (another process, a resumed run, a crash) sees a file or folder either as it was or
as it is now, never half written: files are written under a temporary name beside their
target and renamed into place; folders are built in a staging folder and renamed at the end.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np


CRASH_AT = "MCLNF_CRASH_AT"
"""Environment variable naming a point where the process kills itself (`crash_point`)."""
_crash_counts: Dict[str, int] = {}


def crash_point(event: str, name: str = "") -> None:
    """SIGKILL this process at the `n`-th time it reaches a point matching MCLNF_CRASH_AT
    (``event:name-glob@n``, e.g. ``rename:manifest.json@3``): how the crash sweep
    (`tools/bench/crash_sweep.py`) stops a run in the middle of each write. Unset: nothing."""
    spec = os.environ.get(CRASH_AT)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    want_event, _, pattern = target.partition(":")
    if event != want_event or not fnmatch.fnmatch(name, pattern or "*"):
        return
    _crash_counts[spec] = _crash_counts.get(spec, 0) + 1
    if _crash_counts[spec] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, write: Callable[[Path], None], temp_dir: Optional[Path] = None) -> None:
    """Write `path` through `write(temp_path)`, then rename it into place, durably.

    `temp_dir` holds the temporary file (default: beside `path`; it must be on the same
    filesystem). The file gets ordinary permissions (mkstemp's are private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=temp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        crash_point("rename", path.name)  # written in full under its temporary name
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    crash_point("renamed", path.name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of a bytes object."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` holds `src`'s bytes: a hard link (no space) or, across filesystems, a copy; a
    reader never sees a partial `dst`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.link-{os.getpid()}"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def staging_dir(output: Path) -> Path:
    """A fresh folder beside `output` (same filesystem, so the final rename is atomic)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.incomplete-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish(staged: Path, output: Path, overwrite: bool) -> None:
    """Move a finished staged folder to `output`; an existing `output` is replaced only when
    `overwrite` (FileExistsError otherwise), and removed only after the new one is in place."""
    output = Path(output)
    if output.exists():
        if not overwrite:
            raise FileExistsError(f"{output}: already exists; pass --overwrite to replace it")
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        output.rename(old)
        Path(staged).rename(output)
        shutil.rmtree(old)
    else:
        Path(staged).rename(output)


def write_ply(path: Path, vertices: np.ndarray, colors: np.ndarray, faces: Optional[np.ndarray] = None) -> None:
    """Binary little-endian PLY (plyfile): float xyz, uchar rgb, optional triangle faces; atomic.
    nerfstudio's `load_3D_points` reads the vertex part as `sparse_pc.ply`."""
    from plyfile import PlyData, PlyElement

    vertices, colors = np.asarray(vertices), np.asarray(colors)
    v = np.empty(len(vertices), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    if len(vertices):
        v["x"], v["y"], v["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
        v["red"], v["green"], v["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    elements = [PlyElement.describe(v, "vertex")]
    if faces is not None:
        f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        f["vertex_indices"] = faces
        elements.append(PlyElement.describe(f, "face"))
    atomic_write(path, lambda tmp: PlyData(elements, text=False, byte_order="<").write(str(tmp)))


def write_png(path: Path, image: np.ndarray) -> None:
    """An 8- or 16-bit image as PNG; atomic."""
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))

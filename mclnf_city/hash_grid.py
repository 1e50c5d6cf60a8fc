"""Hash-grid encoding on the CPU: a fused C++ kernel, and the plain-torch reference it must equal.

The reference is nerfstudio's torch `HashEncoding.pytorch_fwd`: same hash, corner order and
table layout, so a block trained with either path loads and renders with the other. The
kernel is compiled on first use with torch's C++ extension builder (a compiler and ninja are
needed; the build is cached under ~/.cache/torch_extensions). When it cannot be built, or
when the input needs a gradient (only the table's is fused), the reference runs instead.

    encode(encoding, coords)       # nerfstudio HashEncoding, [N, 3] in [0, 1] -> [N, L*F]
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Optional

import torch
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor

_SOURCE = Path(__file__).with_name("csrc") / "hash_grid.cpp"
_NAME = "mclnf_hash_grid"
_lock = threading.Lock()
_kernel = None
_failure: Optional[str] = None


def kernel():
    """The compiled extension, or None (with the reason in `kernel_status()`)."""
    global _kernel, _failure
    if _kernel is not None or _failure is not None:
        return _kernel
    with _lock:
        if _kernel is None and _failure is None:
            if os.environ.get("MCLNF_HASH_GRID", "").lower() == "torch":
                _failure = "disabled by MCLNF_HASH_GRID=torch"
                return None
            try:
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": expected
                from torch.utils.cpp_extension import get_default_build_root, load

                if not any(Path(get_default_build_root()).glob(f"*/{_NAME}/*.so")):  # <root>/<python+torch tag>/<name>
                    print("[mclnf-city] building the fused CPU hash-grid kernel (first use only, about a minute)", flush=True)
                _kernel = load(
                    name=_NAME,
                    sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as e:  # noqa: BLE001 - no compiler, no ninja, build error: fall back
                _failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return _kernel


def kernel_status() -> str:
    """'fused C++ kernel' or why the plain-torch reference is used."""
    return "fused C++ kernel" if kernel() is not None else f"plain torch ({_failure})"


class _FusedHashGrid(torch.autograd.Function):
    """enc = A(coords) · table: the encoding is linear in the table (A interpolates and hashes)."""

    @staticmethod
    def forward(ctx, coords: Tensor, table: Tensor, scalings: Tensor) -> Tensor:
        ctx.save_for_backward(coords, table, scalings)
        return kernel().forward(coords, table, scalings)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        coords, table, scalings = ctx.saved_tensors
        return None, _FusedHashGridTranspose.apply(grad_out, coords, table, scalings), None


class _FusedHashGridTranspose(torch.autograd.Function):
    """The table's gradient Aᵀ · grad_out. It is linear in grad_out and does not depend on the
    table, so its own gradient is A · v, the forward kernel again: derivatives of every order
    (second-order MAML's) stay fused and exact."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, coords: Tensor, table: Tensor, scalings: Tensor) -> Tensor:
        ctx.save_for_backward(coords, scalings)  # the table only gives the gradient's shape
        return kernel().backward(grad_out.contiguous(), coords, table, scalings)

    @staticmethod
    def backward(ctx, v: Tensor):
        coords, scalings = ctx.saved_tensors
        return _FusedHashGrid.apply(coords, v.contiguous(), scalings), None, None, None


def encode(encoding: HashEncoding, coords: Tensor) -> Tensor:
    """nerfstudio's `HashEncoding` applied to coords [N, 3] in [0, 1] -> [N, L*F], fused when possible.

    The module's own forward (tcnn on CUDA, its torch reference elsewhere) runs when the kernel
    is unavailable, off the CPU, or when the coordinates need a gradient (only the table's is fused).
    """
    fused = (
        encoding.tcnn_encoding is None
        and coords.device.type == "cpu"
        and coords.dtype == encoding.hash_table.dtype == torch.float32
        and not (coords.requires_grad and torch.is_grad_enabled())
        and kernel() is not None
    )
    if not fused:
        return encoding(coords)
    return _FusedHashGrid.apply(coords.reshape(-1, 3).contiguous(), encoding.hash_table, encoding.scalings.float()).reshape(
        *coords.shape[:-1], -1
    )

"""Keep freed memory in the process on CPU (glibc), so large tensors do not page-fault.

A training step allocates and frees tensors of tens of MB (hundreds of thousands of samples
times a hidden width). glibc serves every allocation above its mmap threshold (at most 32 MB)
with a fresh `mmap` and returns it to the system on `free`, so each step touches new pages
and pays a page fault per 4 KiB: on this project's 2-core machine that made an out-of-place
ReLU over 262k x 64 floats 3x slower and a matmul of that size 2x slower than on reused
memory. `keep_freed_memory` tells glibc (`mallopt`) to serve large blocks from its heap and
never trim it, the effect of the jemalloc/tcmalloc preload that PyTorch's CPU tuning guide
recommends, without a new dependency. Peak memory is unchanged; freed memory stays with the
process for reuse.

Called once when a city model is built on the CPU. `MCLNF_MALLOC=default` leaves glibc's
behaviour alone; non-glibc systems are left alone too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_state = "not set"


def keep_freed_memory() -> str:
    """Apply once per process; returns what was done (for the start-up notice and benchmarks)."""
    global _state
    if _state != "not set":
        return _state
    if os.environ.get("MCLNF_MALLOC", "") == "default":
        _state = "glibc default (MCLNF_MALLOC=default)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "system default (not glibc)"
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        _state = "glibc heap kept (no mmap, no trim)" if ok else "glibc default (mallopt refused)"
    return _state


def status() -> str:
    """What `keep_freed_memory` did in this process ("not set" before it ran)."""
    return _state

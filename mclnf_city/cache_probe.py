"""Instrumenting the frozen-block cache: which blocks a render asks for, which it reads from disk, and how long a read takes.

Used by the scale benchmark and the tests to measure that a view reads only the blocks its
rays touch and that memory stays bounded by `max_loaded_blocks`.
"""

from __future__ import annotations

import time
from typing import List


class CacheProbe:
    """Counts what the block cache reads from disk, and how long each read takes.

    Wraps the instances (not the classes): `store.load_block` for reads, `cache.get` for
    the blocks a render asks for and the cache's size after every request.
    """

    def __init__(self, model):
        self.model, self.cache, self.store = model, model.frozen, model.frozen.store
        self.reset()
        self._load, self._get = self.store.load_block, self.cache.get

        def load_block(b):
            self.loads.append(b)
            return self._load(b)

        def get(b, device):
            miss = b not in self.cache._blocks
            start = time.perf_counter()
            module = self._get(b, device)
            if miss:  # read, checksum, torch.load, build the field, load its state, freeze
                self.miss_seconds.append(time.perf_counter() - start)
            self.requested.add(b)
            self.max_cached = max(self.max_cached, len(self.cache._blocks))
            return module

        self.store.load_block, self.cache.get = load_block, get

    def reset(self) -> None:
        self.loads: List[int] = []
        self.miss_seconds: List[float] = []
        self.requested = set()
        self.max_cached = 0

    def remove(self) -> None:
        del self.store.load_block, self.cache.get  # back to the class methods

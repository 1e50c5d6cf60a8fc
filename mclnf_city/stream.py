"""The block stream: which block trains at which step, in which wave, and which block is active.

Step s of a process belongs to slot ``s // steps_per_block`` of its schedule. The stream is
cut into *waves* of `blocks_per_wave` blocks (default: one per process); inside a wave, block
i goes to process i % world. A block sees as frozen context only the blocks of earlier waves
(and blocks trained before this run), so what it learns depends on the wave size, never on
which process trained it or how fast.

`BlockStream` alone moves the active block: `activate(b)` places the model's active slot on b
(reset to θ_shared) and points the data manager at b's rays, in one call. The model's
`active_block` buffer is what checkpoints keep; the store's status is the truth about
finished blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, List, Optional


def wave_schedule(stream: List[int], blocks_per_wave: int, rank: int, world: int) -> List[Optional[int]]:
    """The blocks rank `rank` trains, one slot of steps_per_block steps each (None: idle slot).

    With several processes every rank gets blocks_per_wave / world slots per wave (idle ones
    where a wave is short), so all ranks reach each wave's end, and its barrier, at the same step.
    """
    if blocks_per_wave < 1 or blocks_per_wave % world:
        raise ValueError(f"--pipeline.blocks-per-wave {blocks_per_wave} must be a positive multiple of the {world} processes")
    slots: List[Optional[int]] = []
    for start in range(0, len(stream), blocks_per_wave):
        wave = stream[start : start + blocks_per_wave]
        mine: List[Optional[int]] = list(wave[rank::world])
        slots += mine + [None] * (blocks_per_wave // world - len(mine))
    while world == 1 and slots and slots[-1] is None:  # one process waits for nobody
        slots.pop()
    return slots


class BlockStream(Sequence):
    """The blocks this run trains, in order (a sequence of block indices), with this process's
    schedule over them."""

    def __init__(self, order: List[int], steps_per_block: int, blocks_per_wave: int, rank: int, world_size: int, model, datamanager):
        self.order = list(order)
        self.steps_per_block = steps_per_block
        self.world_size = world_size
        self.schedule = wave_schedule(self.order, blocks_per_wave, rank, world_size)
        self.slots_per_wave = blocks_per_wave // world_size
        self.total_steps = len(self.schedule) * steps_per_block
        self._model, self._datamanager = model, datamanager

    # A sequence of block indices, as the stream is printed, stored and iterated.
    def __getitem__(self, i):
        return self.order[i]

    def __len__(self) -> int:
        return len(self.order)

    def __eq__(self, other) -> bool:
        if isinstance(other, (BlockStream, list, tuple)):
            return self.order == list(other)
        return NotImplemented

    __hash__ = None  # compared by value, like a list

    def __repr__(self) -> str:
        return f"BlockStream({self.order})"

    def block_at(self, step: int) -> Optional[int]:
        """The block this process trains at `step` (None: its share of the wave is done, it waits)."""
        return self.schedule[min(step // self.steps_per_block, len(self.schedule) - 1)]

    def is_last_step_of_slot(self, step: int) -> bool:
        return (step + 1) % self.steps_per_block == 0 or step + 1 >= self.total_steps

    def is_last_step_of_wave(self, step: int) -> bool:
        return ((step + 1) // self.steps_per_block) % self.slots_per_wave == 0 or step + 1 >= self.total_steps

    def context_blocks(self, b: int, done_blocks: List[int]) -> List[int]:
        """Finished blocks that answer for their own regions while b trains: those of earlier
        waves, and those trained before this run (a grown city's old blocks)."""
        wave = self.slots_per_wave * self.world_size
        earlier = set(self.order[: self.order.index(b) // wave * wave])
        return [c for c in done_blocks if c in earlier or c not in self.order]

    def resume_step(self, finished: Callable[[int], bool]) -> int:
        """First step of the first wave with an unfinished block (where a multi-process run resumes)."""
        wave = self.slots_per_wave * self.world_size
        for i in range(0, len(self.order), wave):
            if not all(finished(b) for b in self.order[i : i + wave]):
                return i // wave * self.slots_per_wave * self.steps_per_block
        return self.total_steps

    @property
    def active(self) -> Optional[int]:
        """The block in the model's active slot (None: none, e.g. a fresh process)."""
        b = int(self._model.active_block)
        return None if b < 0 else b

    def activate(self, b: int) -> None:
        """Reset the active slot to θ_shared on block b, and draw rays from b."""
        self._model.start_block(b)
        self._datamanager.active_block = b

    def follow(self, b: Optional[int]) -> None:
        """Draw rays from b without touching the model (None: from no block, e.g. an idle slot);
        used when the model's slot already holds b, as after loading a checkpoint."""
        self._datamanager.active_block = b

    def deactivate(self) -> None:
        """No block active: the next `activate` starts afresh (every process after a restart)."""
        self._model.active_block.fill_(-1)
        self._datamanager.active_block = None

"""Block-parallel training over processes, with torch.distributed as nerfstudio launches it.

Blocks are independent once they start from θ_shared, so ranks do not share gradients (no
DDP): each rank trains its share of every wave of the stream (`mclnf_city/stream.py`), and
all ranks meet at a barrier at the end of each wave. A run with one process and
`--pipeline.blocks-per-wave 2` gives the blocks of a two-process run.

`ns-train ... --machine.num-devices N` starts the processes (nerfstudio's `launch`, gloo on
CPU, nccl on GPU). nerfstudio 1.1.5's spawned worker asserts that CUDA is available, so on
CPU `use_cpu_worker` swaps in `cpu_worker`, which does the same job with gloo.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, Dict

import torch
import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def average_across_ranks(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of each tensor over all ranks (every rank gets the result)."""
    if world_size() == 1:
        return tensors
    out = {}
    for k in sorted(tensors):  # the same order on every rank
        t = tensors[k].detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[k] = t / world_size()
    return out


def cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_devices_per_machine: int,
    machine_rank: int,
    dist_url: str,
    config: Any,
    timeout: timedelta = timedelta(minutes=30),
    device_type: str = "cpu",
) -> Any:
    """One spawned CPU process of `ns-train --machine.num-devices N`: gloo process group, then train."""
    from nerfstudio.utils import comms

    global_rank = machine_rank * num_devices_per_machine + local_rank
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    for m in range(world_size // num_devices_per_machine):  # every rank creates every group, in order
        group = dist.new_group(list(range(m * num_devices_per_machine, (m + 1) * num_devices_per_machine)))
        if m == machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    # The machine's cores are shared by its processes; more threads than cores only thrash.
    # OMP_NUM_THREADS, when set, caps a process's threads as it does for one process.
    threads = max(1, (os.cpu_count() or 1) // num_devices_per_machine)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    torch.set_num_threads(threads)
    try:
        result = main_func(local_rank, world_size, config, global_rank)
        dist.barrier()  # nobody tears the group down while another rank still trains
        return result
    finally:
        dist.destroy_process_group()


def use_cpu_worker(device_type: str, world: int) -> None:
    """Before nerfstudio's `launch` spawns CPU processes: use `cpu_worker` (see module docstring)."""
    if device_type != "cpu" or world <= 1:
        return
    import nerfstudio.scripts.train as ns_train

    ns_train._distributed_worker = cpu_worker

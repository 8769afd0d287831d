"""Multi-process training on torch.distributed, launched by `torchrun`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the CLI joins the
process group when it starts (`setup`). Every rank runs the same stage code; what differs:

- each rank trains on its DistributedSampler shard and DDP averages the gradients;
- only rank 0 writes files (`atomic_path` discards the writes of the other ranks) and the manifest;
- teacher outputs for the cache and test-split predictions are computed in shards and gathered.

Outside torchrun (WORLD_SIZE unset or 1) every function here is a cheap no-op, and this module
imports no torch, so the torch-free device install can use the run directory code.
"""
from __future__ import annotations

import os

import numpy as np


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a torchrun job of more than one process whose group has been joined."""
    if world_size() < 2:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def backend() -> str:
    """NCCL when every local rank has a GPU of its own, else gloo on CPU (NCCL has no CPU tensors)."""
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()) or 1)
    return "nccl" if torch.cuda.is_available() and local <= torch.cuda.device_count() else "gloo"


def setup() -> None:
    """Join the torchrun process group (no-op for a single process)."""
    if world_size() < 2:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    chosen = backend()
    if chosen == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(chosen)


def teardown() -> None:
    if active():
        import torch.distributed as dist

        dist.destroy_process_group()


def device():
    """Where this rank trains: its own GPU under NCCL, else the CPU."""
    import torch

    if active() and backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64, so counts stay exact)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def shard_rows(n: int) -> np.ndarray:
    """This rank's contiguous block of rows 0..n-1 (blocks differ in size by at most one)."""
    return np.array_split(np.arange(n), world_size())[rank()] if active() else np.arange(n)


def gather_rows(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's `shard_rows` block back into whole arrays, in rank order."""
    if not active():
        return part
    import torch.distributed as dist

    parts: list = [None] * world_size()
    dist.all_gather_object(parts, part)
    return {k: np.concatenate([p[k] for p in parts]) for k in part}


def broadcast_buffers(module) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP syncs gradients, not running stats)."""
    if not active():
        return
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b.data, src=0)

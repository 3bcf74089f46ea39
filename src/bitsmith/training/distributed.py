"""torchrun / DistributedDataParallel helpers of the training loop.

The same script runs with or without torchrun: without a process group every helper is a
no-op for one process (rank 0 of 1).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
        return torch.device("cpu")
    return torch.device(device)


def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the process group or the torchrun environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group under torchrun (NCCL on GPU, gloo on CPU).

    Returns True if this call created it (the caller then destroys it)."""
    _, world, _ = dist_info()
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def all_reduce_mean(t: Tensor) -> Tensor:
    """Average a tensor over ranks in place (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def all_finite(loss: Tensor, world: int) -> bool:
    """Whether ``loss`` is finite on every rank (one all-reduce under DDP)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() >= 1)


def barrier(world: int) -> None:
    """Wait for every rank (no-op for one process)."""
    if world > 1:
        dist.barrier()

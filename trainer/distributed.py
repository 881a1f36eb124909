"""Multi-process training (``torchrun``): process-group setup and the few collectives we need.

One code path serves one process and many: without ``torchrun`` the world is a single rank
and every helper degrades to a no-op, so ``train.py`` never branches on "distributed or
not" beyond choosing a sampler. gloo on CPUs, nccl on CUDA (the only backend that does GPU
collectives well). Only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)


class DeviceError(UserError):
    """The requested compute device does not exist on this machine."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job and which device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA works, else the CPU; ``cuda`` must exist."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "cpu":
        return torch.device("cpu")
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device} was requested but CUDA is not available to PyTorch on this machine "
            "(torch.cuda.is_available() is False): use --device cpu or install a CUDA build of torch"
        )
    if device.startswith("cuda:"):
        return torch.device(device)
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def init(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, on the collective's device)."""
    if not info.distributed:
        return list(values)
    dev = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any: ranks must agree on stopping early."""
    if not info.distributed:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


__all__ = ["DeviceError", "DistInfo", "all_reduce_sum", "any_rank", "barrier", "init", "resolve_device", "shutdown"]

"""DistributedDataParallel helpers: process-group setup from ``torchrun`` variables, reductions.

``torchrun --nproc_per_node=N -m ssdkit.cli.main train CONFIG`` (or ``python -m
torch.distributed.run ...``) starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_distributed` reads them and joins the group
(``nccl`` for CUDA, ``gloo`` on CPU); without them it returns a single-process :class:`DistInfo`
and every helper here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup", "all_reduce_sum", "broadcast_object", "gather_objects",
           "barrier", "any_true"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and plots."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device_type: str, backend: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment variables.

    Args:
        device_type: ``'cuda'`` or ``'cpu'`` (``'mps'`` runs single-process only).
        backend: ``'auto'`` (``nccl`` on CUDA, ``gloo`` otherwise), ``'nccl'`` or ``'gloo'``.
        timeout_s: collective timeout.

    Returns:
        a :class:`DistInfo`; single-process when ``WORLD_SIZE`` is unset or 1.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo, wait: bool = False) -> None:
    """Leave the process group (if this module's caller joined one).

    ``wait``: first wait for every rank (after a normal end: rank 0 may still be writing plots when
    the others finish). Not after an error, where the other ranks may never arrive.
    """
    if info.distributed and dist.is_initialized():
        if wait:
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()


def _device_for(info: DistInfo) -> torch.device:
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64); the values themselves without DDP."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device_for(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
    if not info.distributed:
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device_for(info) if info.backend == "nccl" else None)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without DDP)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op without DDP)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

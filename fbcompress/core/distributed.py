"""torchrun / DistributedDataParallel plumbing, kept apart from the stages that use it.

`torchrun --nproc-per-node N -m fbcompress train-teacher ...` (or `data features`) sets RANK/WORLD_SIZE/LOCAL_RANK;
we initialise the process group (NCCL on CUDA, gloo on CPU), each rank takes its own slice of the work (of every
global batch; of the feature shards), and only rank 0 writes the shared files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RunContext:
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


def setup(device_hint: str | None = None) -> RunContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_hint in (None, "auto") else device_hint.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return RunContext(rank, world_size, local_rank, device)


def barrier(ctx: RunContext) -> None:
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: RunContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


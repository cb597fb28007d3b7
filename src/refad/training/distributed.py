"""Data-parallel training under torchrun: each process trains on its shard of the global batch.

`torchrun --nproc_per_node N -m refad train ...` gives the same model as one process with the
same global batch: the batch order and jitter come from the same (seed, epoch) generators on
every rank (noise drawn for the whole batch and sliced), each rank's loss is weighted by its
share of the batch, and gradients are summed across ranks before the optimiser step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Rank and world size; world 1 means an ordinary single process."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's rows in a batch of n (first ranks take the remainder)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of `params`, flattened into one buffer."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum_scalar(self, value: float, device: torch.device) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group that torchrun describes in the environment (if any).

    CUDA ranks use NCCL and their LOCAL_RANK GPU; CPU ranks use gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world=world), device

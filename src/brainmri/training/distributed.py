"""Multi-GPU training through ``torchrun``: one process per device, DistributedDataParallel, the same loop.

``torchrun --nproc_per_node=N -m brainmri train`` starts N copies of the
training stage; torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables
are all this module reads. Without them (a plain ``dvc repro``) everything
here is a no-op and training runs as one process.

How the pieces fit the single-process loop:

- Every rank computes the same seeded epoch shuffle and takes every
  ``world_size``-th row of each batch (``Dist.shard``): the global batch,
  the number of steps and so the LR schedule stay those of one process.
- DDP averages gradients, so every rank takes the same optimiser step and
  the weights stay identical; BatchNorm statistics are per rank and are
  made rank 0's (``sync_buffers``) before each val pass.
- Val is sharded the same way and the sums are all-reduced, so every rank
  sees the same val loss and makes the same early-stopping decision.
- Only rank 0 writes checkpoints and dvclive logs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a batch's rows (all of them in one process)."""
        if len(rows) < self.world_size:
            raise ValueError(
                f"a batch of {len(rows)} image(s) cannot be shared by {self.world_size} processes; raise batch_size"
            )
        return rows[self.rank :: self.world_size]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64, so counts stay exact); the values themselves in one process."""
        if self.world_size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), so all evaluate and save one model."""
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP (gradients averaged over ranks); ``model`` itself in one process.

        Call again whenever ``requires_grad`` changes (two-phase fine-tuning):
        DDP fixes the parameters it reduces when it is built.
        """
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[Dist]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU); leave it afterwards.

    On CUDA each rank uses GPU ``LOCAL_RANK``. A process group that already
    exists (a test, a caller that set one up) is used and left in place.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        yield Dist(device=device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Dist(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if created:
            dist.destroy_process_group()

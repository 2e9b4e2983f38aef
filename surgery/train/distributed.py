"""torchrun / DDP: one process per device, NCCL on GPUs, gloo on CPU.

``Distributed.from_env()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
without it the run is a single process and every collective is a no-op. Rank 0 alone
writes checkpoints, logs, reports and exports. Masks are broadcast from rank 0 so every
rank prunes the same weights whatever produced them; ghost schedules are pure
functions of the step, so every rank computes the same alpha and beta.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from surgery.compiler.masks import Mask


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """Join torchrun's process group when launched by it; pick this process's device."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        chosen = pick_device(device, local_rank)
        if world_size > 1 and not dist.is_initialized():
            if chosen.type == "cuda":
                torch.cuda.set_device(chosen)
            dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(rank, world_size, local_rank, chosen)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` inside DDP (a new wrapper each call: after de-ghosting the parameters changed)."""
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (a new tensor; ``tensor`` itself when single-process)."""
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (signals, divergence)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_sum(t).item() > 0)

    def broadcast_masks(self, model: nn.Module) -> int:
        """Make every mask equal rank 0's; returns how many masks there are."""
        masks = [m.mask for m in model.modules() if isinstance(m, Mask)]
        if self.enabled:
            for mask in masks:
                as_bytes = mask.to(torch.uint8)
                dist.broadcast(as_bytes, src=0)
                mask.copy_(as_bytes.bool())
        return len(masks)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    return chosen

"""torch.distributed for the recipe: one process per device under torchrun, or a single process without it.

- `ddp`: every rank holds the whole model; `DistributedDataParallel` averages the trainable parameters' gradients.
  Frozen parameters and buffers are loaded identically on every rank, so DDP is told to skip them (no 13 GB
  broadcast of a frozen 7B decoder at start).
- `fsdp`: additionally shards each frozen decoder block across ranks with FSDP2 (`fully_shard`), so a decoder too
  big for one device fits (13B and up); the trainable parts (VPG-C, the VPG in the align stage) stay replicated
  under DDP. They are tiny (6.3M parameters for 7B), so sharding them would save nothing.
Backends: NCCL on CUDA, gloo on CPU (`torchrun --nproc_per_node=2` on a laptop runs the same code).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components.errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over ranks (float64 on the CPU for gloo, so counts stay exact)."""
        if not self.distributed:
            return value
        total = value.detach().to(self.device, torch.float64)
        dist.all_reduce(total)
        return total.to(value.device, value.dtype)

    def gather(self, obj: object) -> list[object]:
        if not self.distributed:
            return [obj]
        objects: list[object] = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init(device: str = "auto") -> Context:
    """Join the process group when torchrun started us (WORLD_SIZE > 1); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
        chosen = torch.device("cuda", local_rank if world_size > 1 else (chosen.index or 0))
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None)
    return Context(rank=rank, world_size=world_size, device=chosen)


def shutdown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, blocks: nn.ModuleList, context: Context, strategy: str) -> nn.Module:
    """`module` ready for data-parallel training: DDP over its trainable parameters (FSDP2 on frozen `blocks`)."""
    if not context.distributed:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            if any(p.requires_grad for p in block.parameters()):
                raise UserError("strategy fsdp shards frozen decoder blocks only; this stage trains the LLM")
            fully_shard(block)
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)

"""Data-parallel training under torchrun: one process per GPU (or CPU process on gloo).

Gradients are averaged with one all-reduce per model per step, after backward, as StyleGAN2-ADA does. The
DistributedDataParallel wrapper is not used: its hooks assume one forward and one backward per step, while a GAN
step runs D several times, double-backpropagates through it for the gradient penalty, and freezes it during the G step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> World:
    """Join the process group that torchrun describes in the environment; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_gradients(module: torch.nn.Module, world: World) -> None:
    if world.size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    if world.size > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def assert_in_sync(module: torch.nn.Module, world: World) -> None:
    """Every process must end with the weights of rank 0; anything else is a bug worth stopping for."""
    if world.size == 1:
        return
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    if not torch.equal(flat, reference):
        raise RuntimeError(f"rank {world.rank}: parameters diverged from rank 0 during distributed training")


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()

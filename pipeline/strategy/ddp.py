"""Data parallel over a torch.distributed process group (gloo on CPU, NCCL on GPU).

Every rank holds full copies of G and D and their optimizers. Before each optimizer step the
gradients of the network being updated are averaged over ranks in one flat all-reduce, so every
rank applies the same update to the same weights (the scheme StyleGAN2-ADA/StyleGAN3 use).

Why not `DistributedDataParallel`'s reducer: it assumes one forward and one backward per
step over a fixed set of parameters. R1 differentiates D's input gradient inside D's phase, and
a second-order loss need not reach every parameter (D's last bias never affects d D / d x; R1
now adds `0 * D(x)` for that); the reducer then waits for a missing gradient and the next step
fails ("Expected to have finished reduction in the prior iteration"). A flat all-reduce at step
time reduces exactly the gradients that exist, whatever graph produced them.

The process group is the launcher's (Ray Train or torchrun create it); without one, it is
created from the usual env:// variables, with COLLECTIVE_TIMEOUT_S.
"""
from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from pipeline.strategy.base import COLLECTIVE_TIMEOUT_S
from pipeline.strategy.single import SingleStrategy


def init_process_group() -> None:
    """Join the launcher's process group, or create one from RANK/WORLD_SIZE/MASTER_ADDR."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def leave_process_group(failed: bool) -> None:
    """Destroy the process group; first wait for every rank, unless this one failed.

    gloo ranks abort at exit ("terminate called without an active exception") when the group
    dies with live tensors or work objects: callers drop theirs first, and gc collects them.
    A rank that failed must not enter a collective: the others may sit in a different one (a
    gradient all-reduce), and both would wait there until the collective timeout. Without the
    barrier it destroys its end at once; the others' pending collective then fails when the
    connection closes, and the launcher restarts the group."""
    gc.collect()
    if not dist.is_initialized():
        return
    if not failed:
        dist.barrier()
    dist.destroy_process_group()


def local_device() -> torch.device:
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers rank `src`'s."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def average_gradients(module: nn.Module, world_size: int) -> None:
    """Average the gradients `module` holds over all ranks, in one flat all-reduce. Parameters
    without a gradient keep none (their optimizer skips them, as in one process)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class ProcessGroupCollectives:
    """The collectives and the way out of the group that every multi-process strategy shares."""

    world_size: int

    def _release(self) -> None:
        """Drop every reference to networks, optimizers and engines."""
        raise NotImplementedError

    def shutdown(self, failed: bool = False):
        self._release()
        leave_process_group(failed)

    def all_reduce_mean(self, t):
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world_size

    def all_gather_object(self, obj):
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        dist.barrier()


class DDPStrategy(ProcessGroupCollectives, SingleStrategy):
    def __init__(self):
        init_process_group()
        super().__init__(local_device())
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def setup(self, nets, optimizers, precision) -> None:
        super().setup(nets, optimizers, precision)
        for net in nets.values():
            broadcast_module(net)  # the trainer seeds identically; this makes it a guarantee

    def step(self, name):
        # Averaged (still scaled) gradients are identical on every rank, so the norm, the
        # skip decision and the fp16 scale update agree everywhere without another collective.
        average_gradients(self.nets[name], self.world_size)
        return super().step(name)

    def _release(self):
        self.nets = self.opts = self.scalers = None

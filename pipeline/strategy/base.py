"""The interface between the trainer and whatever distributes it."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.precision import Precision

# How long a rank waits inside one collective before the group fails and the launcher
# restarts it from the last checkpoint. Longest legitimate waits measured on the 2-core CPU
# machine: rank 0 preparing the image metrics at the first evaluation while the others wait
# in a barrier, 87-140 s (eval defaults on all of MNIST; more with eval.classifier_steps or
# eval.n_real, hours with Inception features); DeepSpeed's first comm-op build, ~120 s, when
# ranks build it unequally (node-local caches); a checkpoint save, < 1 s. Five minutes keeps
# 2x margin and ends a hang long before the 30 minutes gloo and Ray Train default to.
COLLECTIVE_TIMEOUT_S = 300


class Strategy:
    """Holds G and D (names 'G' and 'D') with their optimizers for one worker.

    `setup(nets, optimizers, precision)` once. Every forward, in every phase, goes through
    `module(name)`, the bare network; then `backward(name, loss)` and `step(name)` update it.
    `state_dict()` / `load_state_dict()` for checkpoints, `set_optim` for a rollback's learning
    rates and scheduled betas, and `shutdown(failed)` exactly once at the end.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def setup(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
              precision: Precision) -> None:
        raise NotImplementedError

    def module(self, name: str) -> nn.Module:
        """The bare network: for every forward, EMA, checkpoints and sampling."""
        raise NotImplementedError

    def backward(self, name: str, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, name: str) -> torch.Tensor:
        """Apply the accumulated gradient of `name` unless it is non-finite, then zero it.
        Returns the gradient norm (a 0-d tensor; non-finite means the step was skipped)."""
        raise NotImplementedError

    def set_optim(self, name: str, **group) -> None:
        """Set `group`'s entries (lr, betas) in every parameter group of `name`'s optimizer."""
        raise NotImplementedError

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Collective: the mean of `t` over ranks."""
        return t

    def all_gather_object(self, obj) -> list:
        """Collective: every rank's `obj`, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None: ...

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def shutdown(self, failed: bool = False) -> None:
        """Release the networks and leave the process group. With `failed` (this rank raised)
        it enters no collective: the others may be waiting in a different one, and a rank that
        waits for them there would hold the whole group until the collective timeout."""

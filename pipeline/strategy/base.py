"""The interface between the trainer and whatever distributes it."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from pipeline.precision import Precision


class Strategy:
    """Holds G and D (names 'G' and 'D') with their optimizers for one worker.

    Lifecycle: `setup(nets, optimizers, precision)` once, then per phase
    `forward_fn(name, training)`, `backward(name, loss)`, `step(name)`; `state_dict()` for
    checkpoints; `shutdown()` at the end.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def setup(self, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
              precision: Precision) -> None:
        raise NotImplementedError

    def module(self, name: str) -> nn.Module:
        """The bare network, for EMA, checkpoints and sampling."""
        raise NotImplementedError

    def forward_fn(self, name: str, training: bool) -> Callable[..., torch.Tensor]:
        """What to call to run `name`: its wrapped form when the phase updates it, the bare
        module when it is only evaluated inside another network's phase."""
        raise NotImplementedError

    def backward(self, name: str, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, name: str) -> torch.Tensor:
        """Apply the accumulated gradient of `name` unless it is non-finite, then zero it.
        Returns the gradient norm (a 0-d tensor; non-finite means the step was skipped)."""
        raise NotImplementedError

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather_object(self, obj) -> list:
        """Collective: every rank's `obj`, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None: ...

    def no_sync(self, name: str):
        return contextlib.nullcontext()

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def shutdown(self) -> None: ...

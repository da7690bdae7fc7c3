"""One process, one device: the reference every other strategy must match."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.precision import Precision
from pipeline.strategy.base import Strategy


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def step_if_finite(module: nn.Module, device: torch.device, step: Callable[[], None]) -> torch.Tensor:
    """Call `step()` only if the total norm of the gradients `module` holds is finite (0 when
    it holds none); return the norm. The one host sync of a phase: a non-finite update must
    never reach the weights."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    if torch.isfinite(norm):
        step()
    return norm


class SingleStrategy(Strategy):
    def __init__(self, device: torch.device | None = None):
        self.device = device or pick_device()

    def setup(self, nets, optimizers, precision: Precision) -> None:
        self.nets: dict[str, nn.Module] = nets
        self.opts: dict[str, torch.optim.Optimizer] = optimizers
        # One GradScaler per network: a scaler shared by D and G lets one network's overflow
        # shrink the other's scale, a known source of fp16 NaNs in GAN training.
        self.scalers = {n: torch.amp.GradScaler(self.device.type, enabled=precision.needs_scaler) for n in nets}

    def module(self, name):
        return self.nets[name]

    def backward(self, name, loss):
        self.scalers[name].scale(loss).backward()

    def step(self, name):
        opt, scaler = self.opts[name], self.scalers[name]
        scaler.unscale_(opt)
        norm = step_if_finite(self.nets[name], self.device, lambda: scaler.step(opt))
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return norm

    def set_optim(self, name, **group):
        for g in self.opts[name].param_groups:
            g.update(group)

    def state_dict(self):
        return {
            "optimizers": {n: o.state_dict() for n, o in self.opts.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
        }

    def load_state_dict(self, state):
        for n, o in self.opts.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.scalers.items():
            if state["scalers"].get(n):
                s.load_state_dict(state["scalers"][n])

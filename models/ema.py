"""Exponential moving average of G's weights, parameterised by a half-life in images."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def ema_beta(batch: int, cur_nimg: int, half_life_kimg: float, rampup: float | None) -> float:
    """Decay per step so that a weight's influence halves every `half_life_kimg` thousand images.

    With a ramp-up the half-life is capped at `cur_nimg * rampup`, so early G_ema follows G
    closely instead of averaging the random initialisation (StyleGAN2-ADA's schedule).
    """
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, cur_nimg * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch / half_life)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (BN stats) are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def recalibrate_batchnorm(G: nn.Module, inputs: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Replace the running statistics of G's batch norms by their plain average over G's
    forward passes on `inputs` (argument tuples) in train mode; G's mode and momenta are kept.

    G_ema's weights average many steps while the statistics `update_ema` copies follow the live
    weights, so G_ema normalises with statistics of another network; re-estimating them on
    G_ema's own activations removes that mismatch."""
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta, was_training = [m.momentum for m in norms], G.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    G.train()
    for args in inputs:
        G(*args)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    G.train(was_training)

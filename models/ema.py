"""Exponential moving average of G's weights, parameterised by a half-life in images."""
from __future__ import annotations

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

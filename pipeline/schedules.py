"""Hyperparameters that follow training progress: R3GAN ramps the R1/R2 weight γ down and
Adam's β2 up over training, each along a half cosine."""
from __future__ import annotations

import math


def cosine(start: float, end: float, kimg: float, over_kimg: float) -> float:
    """`start` at kimg 0, `end` from `over_kimg` on, a half cosine between (0: `end` at once)."""
    t = min(kimg / over_kimg, 1.0) if over_kimg > 0 else 1.0
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2

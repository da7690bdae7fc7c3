"""Mode coverage and sample quality on 2-D Gaussian mixtures.

The literature's definitions (VEEGAN, PacGAN): a sample is high quality when it lies within
3 standard deviations of its nearest centre; a mode is covered when at least 0.8 % of all
samples are high-quality samples nearest to it (PacGAN's 20 of 2,500).
"""
from __future__ import annotations

import torch

MODE_SHARE = 0.008


def mixture_scores(points: torch.Tensor, centers: torch.Tensor, std: float) -> dict[str, float]:
    """points (N, 2) -> {'hq_pct', 'modes_covered', 'modes_total'}."""
    points = points.detach().float().cpu()
    dist = torch.cdist(points, centers.float())
    nearest_dist, nearest = dist.min(dim=1)
    hq = nearest_dist <= 3 * std
    per_mode = torch.bincount(nearest[hq], minlength=len(centers))
    covered = int((per_mode >= MODE_SHARE * len(points)).sum())
    return {
        "hq_pct": 100.0 * hq.float().mean().item(),
        "modes_covered": float(covered),
        "modes_total": float(len(centers)),
    }

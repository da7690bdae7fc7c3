"""Improved precision and recall (Kynkäänniemi et al. 2019) on k-NN manifolds of features.

Each set's manifold is the union of balls around its points, each ball's radius the distance
to that point's k-th nearest neighbour within the set. Precision: share of generated points
inside the real manifold (quality). Recall: share of real points inside the generated manifold
(coverage). Both in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import GantryError

ROWS = 1024  # rows of the distance matrix held at once: memory stays O(ROWS * N)


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    # k + 1: each point's nearest neighbour in its own set is itself, at distance 0.
    return torch.cat([torch.cdist(feats[i:i + ROWS], feats).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(feats), ROWS)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Share of `points` within radius of at least one centre."""
    hits = [(torch.cdist(points[i:i + ROWS], centres) <= radii).any(dim=1)
            for i in range(0, len(points), ROWS)]
    return torch.cat(hits).float().mean()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """real (N, D), fake (M, D) features -> {'precision', 'recall'}."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if real_t.dim() != 2 or fake_t.dim() != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise GantryError(f"precision/recall needs two (N, D) feature sets of one D, got "
                          f"{tuple(real_t.shape)} and {tuple(fake_t.shape)}")
    if min(len(real_t), len(fake_t)) <= k:
        raise GantryError(f"precision/recall with k={k} needs more than {k} samples per set")
    return {"precision": _inside(fake_t, real_t, _knn_radii(real_t, k)).item(),
            "recall": _inside(real_t, fake_t, _knn_radii(fake_t, k)).item()}

"""Distances between two sets of feature vectors: Fréchet distance (FID) and KID.

Both take features from the same extractor (Inception pool3 for FID/KID proper, or the domain
classifier's embedding for a fast proxy) as float arrays of shape (N, D).

- FID (Heusel et al. 2017): ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between the
  Gaussians fitted to each set. Biased for small N: compare values at equal N only.
- KID (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3, averaged over random subsets. Unbiased: ~0 (and may dip below 0)
  when both sets come from one distribution, at any N.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import GantryError


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set; what FID compares and what the real-data cache holds."""
    mu: np.ndarray      # (D,)
    sigma: np.ndarray   # (D, D)
    n: int

    @classmethod
    def of(cls, feats: np.ndarray) -> "GaussianStats":
        feats = _as_features(feats, "features")
        if len(feats) < 2:
            raise GantryError(f"FID needs at least 2 feature vectors, got {len(feats)}")
        return cls(feats.mean(0), np.cov(feats, rowvar=False), len(feats))

    @property
    def spread(self) -> float:
        """sqrt(2 tr sigma): the root mean square distance between two samples of the set, the
        feature-space diversity the health monitor compares between generated and real data."""
        return float(np.sqrt(2 * max(np.trace(self.sigma), 0.0)))


def _as_features(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise GantryError(f"{what} must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GantryError(f"{what} contain NaN or Inf (did the generator diverge?)")
    return x


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between N(mu_a, S_a) and N(mu_b, S_b).

    tr (S_a S_b)^(1/2) equals tr (A S_b A)^(1/2) with A = S_a^(1/2): the latter matrix is
    symmetric PSD, so it needs two symmetric eigendecompositions and never a complex sqrtm.
    """
    if a.mu.shape != b.mu.shape:
        raise GantryError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    root_a = _sqrt_psd(a.sigma)
    cross = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    mean_term = np.square(a.mu - b.mu).sum()
    return float(mean_term + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    return frechet_distance(GaussianStats.of(feats_a), GaussianStats.of(feats_b))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two samples under k(x, y) = (x.y / D + 1)^3 (diagonal terms excluded)."""
    x, y = _as_features(x, "features"), _as_features(y, "features")
    m, n, d = len(x), len(y), x.shape[1]
    if m < 2 or n < 2:
        raise GantryError(f"KID needs at least 2 samples per set, got {m} and {n}")
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> float:
    """Mean unbiased MMD^2 over `subsets` random subsets (without replacement within a subset)."""
    feats_a, feats_b = _as_features(feats_a, "features"), _as_features(feats_b, "features")
    size = min(subset_size, len(feats_a), len(feats_b))
    rng = np.random.default_rng(seed)
    return float(np.mean([
        mmd2_unbiased(feats_a[rng.choice(len(feats_a), size, replace=False)],
                      feats_b[rng.choice(len(feats_b), size, replace=False)])
        for _ in range(subsets)]))

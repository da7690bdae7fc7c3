"""What the trainer runs at eval intervals: G_ema -> metrics and pictures, logged.

An evaluator is a callable `(G_ema, step, tracker) -> dict of metrics`. It draws from its own
fixed-seed generator so evaluating never changes the training RNG stream (exact resume).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import storage
from pipeline.metrics.mixture import mixture_scores
from pipeline.tracking import Tracker
from pipeline.visuals import image_grid, save_png, scatter_image

GRID_PER_CLASS = 8  # columns of a conditional run's sample grid, one row per class


def quality_score(metrics: dict[str, float]) -> float | None:
    """One number, higher is better, to pick the best checkpoint: -FID for images; for toy
    data modes covered first, then % high-quality samples."""
    if "fid" in metrics:
        return -metrics["fid"]
    if "modes_covered" in metrics:
        return metrics["modes_covered"] * 1000 + metrics["hq_pct"]
    return None


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The metric a person watches: FID for images, modes covered for toy data."""
    for name in ("fid", "modes_covered"):
        if name in metrics:
            return name, metrics[name]
    return next(iter(metrics.items()), None)


@torch.no_grad()
def generate(G, n: int, z_dim: int, seed: int, batch: int = 1000, part: tuple[int, int] = (0, 1),
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """G's outputs for n fixed-seed latents. `part=(rank, world_size)`: only that rank's
    contiguous share of them, so the shares concatenated in rank order are the n outputs.
    `labels` (n,): the class of each, for a conditional G (None: its classes in turn)."""
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z = torch.tensor_split(torch.randn(n, z_dim, generator=gen), part[1])[part[0]]
    if labels is None:
        return torch.cat([G(z[i:i + batch].to(device)).float().cpu() for i in range(0, len(z), batch)])
    c = torch.tensor_split(labels, part[1])[part[0]]
    return torch.cat([G(z[i:i + batch].to(device), c[i:i + batch].to(device)).float().cpu()
                      for i in range(0, len(z), batch)])


def class_rows(classes: int, per_class: int) -> torch.Tensor:
    """Labels for a grid with one row per class: per_class of class 0, then of class 1, ..."""
    return torch.arange(classes).repeat_interleave(per_class)


class MixtureEvaluator:
    def __init__(self, centers: torch.Tensor, std: float, z_dim: int, n: int = 10_000, seed: int = 12345):
        self.centers, self.std, self.z_dim, self.n, self.seed = centers, std, z_dim, n, seed

    def __call__(self, G, step: int, tracker: Tracker) -> dict[str, float]:
        points = generate(G, self.n, self.z_dim, self.seed)
        scores = mixture_scores(points, self.centers, self.std)
        tracker.log_metrics(scores, step)
        tracker.log_image(scatter_image(points[:2000], self.centers), "samples", step)
        return scores


class ImageEvaluator:
    """A sample grid of fixed latents every time, plus `metrics` (an ImageMetrics, or None)
    on `n_fake` generated images.

    With `comm` (the strategy's collectives) and several ranks, every rank generates and
    extracts features of its share of the images; rank 0 gathers them, scores and logs."""

    def __init__(self, z_dim: int, run_dir: str, metrics=None, n_fake: int = 5000, features: str = "classifier",
                 n_grid: int = 64, seed: int = 12345, comm=None, classes: int = 0):
        self.z_dim, self.run_dir, self.n_grid, self.seed = z_dim, str(run_dir), n_grid, seed
        self.classes = classes  # a conditional G's: the grid shows one row per class
        self.metrics, self.n_fake, self.features, self.comm = metrics, n_fake, features, comm
        self.rank, self.world_size = (comm.rank, comm.world_size) if comm else (0, 1)
        self._prepared = False

    def __call__(self, G, step: int, tracker: Tracker) -> dict[str, float]:
        if self.rank == 0:
            grid = self._grid(G)
            save_png(grid, storage.join(self.run_dir, "samples", f"grid-{step:09d}.png"))
            tracker.log_image(grid, "samples", step)
        if self.metrics is None:
            return {}
        if self.world_size > 1 and not self._prepared:
            if self.rank == 0:
                self.metrics.prepare()  # fills the cache the other ranks then read
            self.comm.barrier()
            self._prepared = True
        # a conditional G's classes in turn, each rank its share with its labels
        labels = torch.arange(self.n_fake) % self.classes if self.classes else None
        part = (self.rank, self.world_size)
        fake = generate(G, self.n_fake, self.z_dim, self.seed + 1, batch=250, part=part, labels=labels)
        parts = self.metrics.extract(fake, None if labels is None else torch.tensor_split(labels, part[1])[part[0]])
        if self.world_size > 1:
            shares = self.comm.all_gather_object(parts)
            parts = {k: np.concatenate([share[k] for share in shares]) for k in parts}
        if self.rank != 0:
            return {}
        scores = self.metrics.score_extracted(parts)
        if f"fid_{self.features}" in scores:
            scores["fid"] = scores[f"fid_{self.features}"]  # the headline number, in the configured space
        tracker.log_metrics(scores, step)
        return scores

    def _grid(self, G):
        if not self.classes:
            return image_grid(generate(G, self.n_grid, self.z_dim, self.seed))
        labels = class_rows(self.classes, GRID_PER_CLASS)
        return image_grid(generate(G, len(labels), self.z_dim, self.seed, labels=labels), cols=GRID_PER_CLASS)


def no_evaluation(G, step: int, tracker: Tracker) -> dict[str, float]:
    """For ranks other than 0: rank 0 evaluates and logs for everyone."""
    return {}

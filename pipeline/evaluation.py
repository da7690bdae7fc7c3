"""What the trainer runs at eval intervals: G_ema -> metrics and pictures, logged.

An evaluator is a callable `(G_ema, step, tracker) -> dict of metrics`. It draws from its own
fixed-seed generator so evaluating never changes the training RNG stream (exact resume).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import storage
from pipeline.metrics import classifier as clf
from pipeline.metrics.fid import GaussianStats, frechet_distance
from pipeline.metrics.mixture import mixture_scores
from pipeline.metrics.translation import pair_scores
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


def metric_names(cfg) -> set[str]:
    """The names an evaluation of a run of `cfg` can report, without reading anything: what a
    sweep may optimize. A translation run reports FID in the classifier's space only when its
    data is labelled, so both spaces are named."""
    if cfg.is_toy:
        return {"hq_pct", "modes_covered", "modes_total"}
    m, space = set(cfg.eval.metrics), cfg.eval.features
    if cfg.is_translation:
        return ({"l1", "psnr", "ssim"} | ({"fid", f"fid_{space}", "fid_inception"} if "fid" in m else set())
                | ({"class_match", "class_match_min"} if "coverage" in m else set()))
    names = {f"diversity_{space}", f"real_diversity_{space}"} if m & {"fid", "kid", "pr"} else set()
    per_metric = {"fid": {"fid", f"fid_{space}"}, "kid": {f"kid_{space}"},
                  "pr": {f"precision_{space}", f"recall_{space}"},
                  "coverage": {"classes_covered", "classes_total", "class_tv"}
                  | ({"class_match", "class_match_min"} if cfg.model.conditional else set()),
                  "cas": {"cas", "cas_real"}, "aug_gain": {"aug_real", "aug_mixed", "aug_gain"}}
    for name in m:
        names |= per_metric[name]
    return names


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


def labels_in_shares(n: int, shares: torch.Tensor) -> torch.Tensor:
    """n labels, class by class, whose counts are `shares` (summing to 1) times n rounded by
    largest remainder, so they sum to n."""
    exact = shares.double() * n
    counts = exact.floor().long()
    counts[torch.argsort(exact - counts, descending=True)[:n - int(counts.sum())]] += 1
    return torch.arange(len(shares)).repeat_interleave(counts)


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
        # a conditional G draws the real set's class mix, so that FID and class_tv compare like
        # with like (the classes in turn put MNIST's class_tv floor at 0.019); each rank its share
        labels = labels_in_shares(self.n_fake, self.metrics.class_shares()) if self.classes else None
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


class TranslationEvaluator:
    """Translates the inputs A of n fixed held-out pairs (of the training split where the shards
    hold none out) and scores G(A) against the targets B: l1, psnr and ssim
    (pipeline/metrics/translation.py); with `metrics` (an ImageMetrics on the same shards) `fid`
    between the outputs and the targets in its feature space and, on labelled data with
    "coverage", class_match: the share of outputs the domain classifier calls their target's
    class. The sample grid has one A | G(A) | B row per pair."""

    def __init__(self, manifest, run_dir: str, metrics=None, n: int = 1000, seed: int = 12345, n_grid: int = 8):
        self.manifest, self.run_dir, self.metrics, self.n, self.seed, self.n_grid = \
            manifest, str(run_dir), metrics, n, seed, n_grid
        self._pairs = None
        self._targets = None  # Gaussian statistics of the targets' features, fixed for the run

    @classmethod
    def from_config(cls, cfg, manifest, run_dir: str, device) -> "TranslationEvaluator":
        """FID in the domain classifier's features where the data is labelled (it trains on the
        targets B and their labels), Inception's otherwise."""
        e, labelled = cfg.eval, bool(manifest.classes)
        names = [name for name in e.metrics if labelled or name != "coverage"]
        metrics = None
        if names:
            from pipeline.metrics.image_eval import ImageMetrics
            metrics = ImageMetrics(cfg.data.path, e.cache_dir or storage.join(cfg.train.out_dir, ".cache"), names,
                                   e.features if labelled else "inception", e.n_real, e.kid_subsets,
                                   e.kid_subset_size, e.pr_k, e.classifier_steps, cfg.seed, device)
        return cls(manifest, run_dir, metrics, e.n_fake, seed=cfg.seed + 12345)

    def __call__(self, G, step: int, tracker: Tracker) -> dict[str, float]:
        scores, out = self._translate_and_score(G)
        tracker.log_metrics(scores, step)
        a, b, _ = self._held_out()
        k = self.n_grid
        grid = image_grid(torch.stack(_same_channels(a[:k], out[:k], b[:k]), 1).flatten(0, 1), cols=3)
        save_png(grid, storage.join(self.run_dir, "samples", f"grid-{step:09d}.png"))
        tracker.log_image(grid, "samples", step)
        return scores

    def score(self, G) -> dict[str, float]:
        return self._translate_and_score(G)[0]

    def _translate_and_score(self, G) -> tuple[dict[str, float], torch.Tensor]:
        a, b, labels = self._held_out()
        out = translate(G, a)
        scores = pair_scores(out, b)
        if self.metrics is not None:
            scores.update(self._feature_scores(out, b, labels))
        return scores, out

    def _held_out(self):
        if self._pairs is None:
            from pipeline.metrics.image_eval import read_pairs
            m = self.manifest
            self._pairs = read_pairs(m, self.n, self.seed, heldout=bool(m.heldout))
        return self._pairs

    def _feature_scores(self, out: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        m, scores = self.metrics, {}
        if "fid" in m.metrics:
            if self._targets is None:
                self._targets = GaussianStats.of(m.extractor(targets).numpy())
            scores[f"fid_{m.features}"] = frechet_distance(self._targets, GaussianStats.of(m.extractor(out).numpy()))
            scores["fid"] = scores[f"fid_{m.features}"]
        if "coverage" in m.metrics:
            scores.update(clf.class_match(m.classifier.predict(out), labels))
        return scores


@torch.no_grad()
def translate(G, a: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """G's outputs for inputs A (N, C, R, R), on G's device in batches, back on the CPU."""
    device = next(G.parameters()).device
    return torch.cat([G(a[i:i + batch].to(device)).float().cpu() for i in range(0, len(a), batch)])


def _same_channels(*images: torch.Tensor) -> list[torch.Tensor]:
    """Grey images repeated to RGB where others in one grid are RGB."""
    c = max(x.shape[1] for x in images)
    return [x.expand(-1, c, -1, -1) if x.shape[1] != c else x for x in images]


def no_evaluation(G, step: int, tracker: Tracker) -> dict[str, float]:
    """For ranks other than 0: rank 0 evaluates and logs for everyone."""
    return {}

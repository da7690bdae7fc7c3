"""Training health: spot divergence and mode collapse, and say what to do about it.

Signals, checked as the trainer reports them:
- divergence, non-finite: a loss (or any other value passed in) is NaN/Inf, or at least
  `max_skipped` of an interval's optimizer steps were skipped for non-finite gradients.
- divergence, D wins: over the last `window` reports, D's loss sits near zero (second-half mean
  below `d_floor`) while G's loss climbs (second-half mean above first-half mean by `g_rise`).
  That reading holds for losses bounded below by 0 (logistic, hinge); set d_floor 0 for wgan-gp.
- divergence, losses blew up: over the second half of the last `window` reports, the mean D or
  G loss is above `max_loss`. `d_floor` 0 turns off only the D-wins rule and `max_loss` 0 only
  this one; both window rules wait for a full window (again after a rollback).
- mode collapse: the diversity (mean pairwise distance in some feature space) of G's images
  for a fixed latent batch falls below `collapse_ratio` times its running baseline (an EMA of
  the healthy readings, seeded by the first `warmup` ones), or, from the first readings, below
  `real_ratio` times the diversity of as many real samples in `real_patience` readings in a row
  (the caller reads those: a G collapsed before the baseline formed sets a collapsed baseline;
  a healthy G can pass through one collapsed reading early on); the same rule against the
  real data's diversity in an evaluation's feature space, where it reports one.
- mode collapse, classes: where an evaluation counts the classes G's images fill (eval metric
  `coverage`, labelled data), fewer than `class_ratio` of the data's classes.

The monitor does no I/O: each check returns a `Decision` and the caller acts on it:
'warn' log it; 'stop' end the run; 'rollback' restore the last good checkpoint and multiply
both learning rates by `lr_scale`. After `max_rollbacks` rollbacks a rollback becomes a stop.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

Action = Literal["ok", "warn", "stop", "rollback"]
POLICIES = ("warn", "stop", "rollback")


@dataclass(frozen=True)
class Decision:
    action: Action
    problem: str | None = None   # "divergence" | "mode_collapse"
    reason: str = ""             # one line for the log
    lr_scale: float = 1.0        # rollback only: factor for both learning rates

    @property
    def ok(self) -> bool:
        return self.action == "ok"


OK = Decision("ok")


class Probe(NamedTuple):
    """What the diversity readings compare: G's fixed inputs, and the diversity of as many real
    samples in the same space (None where unknown). A conditional G's `labels` are the classes
    it is asked for, and both diversities are then read within classes: images of different
    classes differ anyway, so across classes a G that draws one image per class reads as
    diverse (seen: MNIST, 43.5 real against 41.0 in classifier features at FID 543)."""
    inputs: tuple[torch.Tensor, ...]
    real_diversity: float | None = None
    labels: torch.Tensor | None = None


def diversity(features: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """Mean pairwise Euclidean distance of (N, D) features (images are flattened); with labels
    (N,), the mean over classes of that distance among the samples of each class (classes with
    one sample have none and are left out)."""
    f = features.detach().float().flatten(1)
    if labels is None:
        return torch.pdist(f).mean().item()
    labels = labels.to(f.device)
    within = [torch.pdist(f[labels == k]).mean() for k in labels.unique() if (labels == k).sum() > 1]
    return torch.stack(within).mean().item()


class HealthMonitor:
    def __init__(self, policy: str = "warn", window: int = 20, d_floor: float = 0.05, g_rise: float = 1.0,
                 max_skipped: float = 0.5, collapse_ratio: float = 0.3, warmup: int = 3,
                 baseline_beta: float = 0.9, lr_scale: float = 0.5, max_rollbacks: int = 3,
                 max_loss: float = 50.0, real_ratio: float = 0.0, class_ratio: float = 0.0,
                 real_patience: int = 2):
        if policy not in POLICIES:
            raise ValueError(f"unknown health policy {policy!r}; expected one of {', '.join(POLICIES)}")
        if window < 4:
            raise ValueError(f"health window must be at least 4 reports, got {window}")
        self.policy, self.window, self.d_floor, self.g_rise = policy, window, d_floor, g_rise
        self.max_skipped, self.collapse_ratio, self.warmup = max_skipped, collapse_ratio, warmup
        self.baseline_beta, self.lr_scale, self.max_rollbacks = baseline_beta, lr_scale, max_rollbacks
        self.max_loss, self.real_ratio, self.class_ratio = max_loss, real_ratio, class_ratio
        self.real_patience = real_patience
        self.last_diversity: float | None = None  # the latest reading, for the trainer to log
        self.rollbacks = 0
        self.baseline: float | None = None
        self._losses: deque[tuple[float, float]] = deque(maxlen=window)
        self._readings = 0
        self._low_real: dict[str, int] = {}  # per space: readings in a row below the real bar

    @classmethod
    def from_config(cls, h) -> "HealthMonitor":
        """From a `HealthConfig` section."""
        return cls(h.policy, h.window, h.d_floor, h.g_rise, h.max_skipped, h.collapse_ratio,
                   h.warmup, h.baseline_beta, h.lr_scale, h.max_rollbacks, h.max_loss, h.real_ratio,
                   h.class_ratio, h.real_patience)

    # ---- checks -------------------------------------------------------------------------

    def check_losses(self, step: int, d_loss: float, g_loss: float, skipped: float = 0.0,
                     extra: dict[str, float] | None = None) -> Decision:
        """One log interval: mean D and G losses, the share of skipped optimizer steps, and any
        other values that must stay finite (gradient norms, ...)."""
        values = {"D loss": d_loss, "G loss": g_loss, **(extra or {})}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            return self._act("divergence", f"step {step}: non-finite {', '.join(bad)}")
        if skipped >= self.max_skipped:
            return self._act("divergence", f"step {step}: {skipped:.0%} of optimizer steps skipped "
                                           f"for non-finite gradients")
        self._losses.append((d_loss, g_loss))
        # Both window rules read the full window; each of d_floor and max_loss turns off its own
        # rule only (wgan-gp turns off both).
        if len(self._losses) < self.window or (self.d_floor <= 0 and self.max_loss <= 0):
            return OK
        half = self.window // 2
        d = [x for x, _ in self._losses]
        g = [y for _, y in self._losses]
        d_late = sum(d[half:]) / (self.window - half)
        g_early, g_late = sum(g[:half]) / half, sum(g[half:]) / (self.window - half)
        if self.max_loss > 0 and max(d_late, g_late) > self.max_loss:
            return self._act("divergence", f"step {step}: losses blew up (D {d_late:.3g}, G {g_late:.3g} "
                                           f"> {self.max_loss:g} over the last {self.window - half} reports)")
        if self.d_floor > 0 and d_late < self.d_floor and g_late - g_early > self.g_rise:
            return self._act("divergence", f"step {step}: D loss {d_late:.3g} ~ 0 while G loss rose "
                                           f"{g_early:.3g} -> {g_late:.3g} over {self.window} reports")
        return OK

    def check_diversity(self, step: int, features: torch.Tensor, real_diversity: float | None = None,
                        labels: torch.Tensor | None = None) -> Decision:
        """Features (N, D) of G's images for the same fixed inputs every time, and the same
        measure on as many real samples; `labels`: the classes a conditional G was asked for,
        read within classes (see Probe). The baseline rule compares a reading with the run's
        own first ones, so it cannot see a G that collapsed before them; the real-data rule
        (real_ratio > 0) can, from the first readings."""
        if not torch.isfinite(features).all():
            return self._act("divergence", f"step {step}: non-finite generator output")
        value = self.last_diversity = diversity(features, labels)
        if real_diversity:
            against_real = self.check_real(step, value, real_diversity, "pixels")
            if not against_real.ok:
                return against_real
        self._readings += 1
        if self.baseline is None or self._readings <= self.warmup:
            # The first readings seed the baseline: their mean, never a verdict.
            n = self._readings
            self.baseline = value if self.baseline is None else self.baseline + (value - self.baseline) / n
            return OK
        if value < self.collapse_ratio * self.baseline:
            return self._act("mode_collapse", f"step {step}: diversity {value:.3g} fell below "
                                              f"{self.collapse_ratio:g} x baseline {self.baseline:.3g}")
        self.baseline = self.baseline_beta * self.baseline + (1 - self.baseline_beta) * value
        return OK

    def check_real(self, step: int, value: float, real: float, space: str) -> Decision:
        """A diversity reading of G's samples against the same measure on real data, in `space`
        (pixels: the probe's; an evaluation's feature space, where a G that draws varied noise
        around a few shapes cannot pass for diverse). Flags after `real_patience` low readings
        in a row: a healthy G can pass through a collapsed reading early on (configs/mnist-dcgan.yaml
        says what was measured)."""
        if self.real_ratio <= 0 or value >= self.real_ratio * real:
            self._low_real[space] = 0
            return OK
        low = self._low_real[space] = self._low_real.get(space, 0) + 1
        if low < self.real_patience:
            return OK
        in_a_row = f" in {low} readings in a row" if low > 1 else ""
        return self._act("mode_collapse", f"step {step}: diversity {value:.3g} ({space}) is below "
                                          f"{self.real_ratio:g} x the real data's {real:.3g}{in_a_row}")

    def check_coverage(self, step: int, covered: float, total: float) -> Decision:
        """An evaluation's count of the data's classes that G's images fill (class_coverage)."""
        if self.class_ratio > 0 and covered < self.class_ratio * total:
            return self._act("mode_collapse", f"step {step}: G's images fill {covered:.0f} of the data's "
                                              f"{total:.0f} classes (fewer than {self.class_ratio:g} of them)")
        return OK

    # ---- policy -------------------------------------------------------------------------

    def _act(self, problem: str, reason: str) -> Decision:
        if self.policy == "warn":
            return Decision("warn", problem, reason)
        if self.policy == "rollback" and self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            # The window holds the run that went wrong; the restored one starts afresh.
            self._losses.clear()
            self._low_real.clear()
            return Decision("rollback", problem, f"{reason}; rollback {self.rollbacks}/{self.max_rollbacks}",
                            self.lr_scale)
        if self.policy == "rollback":
            reason = f"{reason}; still failing after {self.max_rollbacks} rollbacks"
        return Decision("stop", problem, reason)

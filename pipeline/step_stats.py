"""What the trainer reports per log interval: each phase's mean loss, gradient norm and stats
over its finite runs, and how many of its optimizer steps were skipped.

Sums stay on the device as tensors; they are read (one host sync) once per log interval, not
every step.
"""
from __future__ import annotations

from typing import Callable

import torch


class StepStats:
    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, phase: str, loss: torch.Tensor, norm: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(norm)  # non-finite: the strategy skipped this step
        values = {f"{phase}/loss": torch.where(finite, loss, 0.0), f"{phase}/grad_norm": torch.where(finite, norm, 0.0),
                  f"{phase}/count": finite.float(), f"{phase}/skipped": (~finite).float()}
        values.update({f"{phase}/{k}": torch.where(finite, v, 0.0) for k, v in stats.items()})
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.float()

    def clear(self) -> None:
        self._sums = {}

    def read(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Means per phase, averaged over ranks, and `skipped_share` of all optimizer steps;
        then clear. Ranks step or skip together, so a skipped count averaged over ranks is
        the count."""
        sums = {k: mean_over_ranks(v).item() for k, v in self._sums.items()}
        self.clear()
        runs = sum(v for k, v in sums.items() if k.endswith(("/count", "/skipped")))
        skipped = sum(v for k, v in sums.items() if k.endswith("/skipped"))
        out = {"skipped_share": skipped / max(runs, 1e-12)}
        for k, v in sums.items():
            phase, stat = k.split("/", 1)
            if stat == "skipped":
                out[k] = v
            elif stat != "count":
                out[k] = v / max(sums[f"{phase}/count"], 1e-12)
        return out

"""2-D Gaussian mixtures, the standard mode-collapse benchmark (ring of k, grid of k x k)."""
from __future__ import annotations

import math

import torch


def mixture_centers(kind: str, modes: int, radius: float) -> torch.Tensor:
    """(modes, 2) centres. ring: k points on a circle of `radius`; grid: sqrt(k) x sqrt(k)
    points spanning [-radius, radius] on both axes."""
    if kind == "toy-ring":
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        return torch.stack([radius * angle.cos(), radius * angle.sin()], 1).float()
    if kind == "toy-grid":
        k = math.isqrt(modes)
        axis = torch.linspace(-radius, radius, k, dtype=torch.float64)
        return torch.cartesian_prod(axis, axis).float()
    raise ValueError(f"unknown mixture {kind!r}")


class MixtureStream:
    """Endless (points, labels) batches from a seeded generator, which is its whole position."""

    channels = 2  # a point is a 2-vector, the toy analogue of an image's channels

    def __init__(self, kind: str, modes: int, std: float, radius: float, batch: int, seed: int):
        self.centers = mixture_centers(kind, modes, radius)
        self.std, self.batch = std, batch
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def class_names(self) -> list[str]:
        """A point's label is the index of its mode."""
        return [f"mode {k}" for k in range(len(self.centers))]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.centers), (self.batch,), generator=self.generator)
        points = self.centers[idx] + self.std * torch.randn(self.batch, 2, generator=self.generator)
        return points, idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

"""A 2-D MLP generator/discriminator pair for toy Gaussian mixtures; `classes > 0` conditions
both on the mixture's mode (models/conditional.py)."""
from __future__ import annotations

import torch
from torch import nn

from models.conditional import LabelEmbedding, Projection


def _mlp(n_in: int, width: int, depth: int, n_out: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), act()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int, width: int = 256, depth: int = 3, out_dim: int = 2, classes: int = 0):
        super().__init__()
        self.z_dim = z_dim
        self.net = _mlp(z_dim * (2 if classes else 1), width, depth, out_dim, nn.ReLU)
        self.embed = LabelEmbedding(classes, z_dim) if classes else None

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c, z)], 1)
        return self.net(z)


class MLPDiscriminator(nn.Module):
    def __init__(self, width: int = 256, depth: int = 3, in_dim: int = 2, classes: int = 0):
        super().__init__()
        # LeakyReLU keeps D's gradient alive off the data manifold, which R1 relies on.
        self.net = _mlp(in_dim, width, depth, 1, lambda: nn.LeakyReLU(0.2))
        self.project = Projection(classes, width) if classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net[:-1](x)
        out = self.net[-1](h).squeeze(1)
        return out if self.project is None else out + self.project(h, c)

"""A 2-D MLP generator/discriminator pair for toy Gaussian mixtures."""
from __future__ import annotations

import torch
from torch import nn


def _mlp(n_in: int, width: int, depth: int, n_out: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), act()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int, width: int = 256, depth: int = 3, out_dim: int = 2):
        super().__init__()
        self.z_dim = z_dim
        self.net = _mlp(z_dim, width, depth, out_dim, nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    def __init__(self, width: int = 256, depth: int = 3, in_dim: int = 2):
        super().__init__()
        # LeakyReLU keeps D's gradient alive off the data manifold, which R1 relies on.
        self.net = _mlp(in_dim, width, depth, 1, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

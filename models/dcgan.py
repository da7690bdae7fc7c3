"""DCGAN (Radford et al. 2015) for 32x32 or 64x64 images, channel widths configurable."""
from __future__ import annotations

import math

import torch
from torch import nn


def _check_resolution(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"DCGAN supports resolution 32 or 64, got {resolution}")
    return int(math.log2(resolution)) - 2  # number of stride-2 stages from/to 4x4


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> images (B, channels, R, R) in [-1, 1]."""

    def __init__(self, z_dim: int, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        stages = _check_resolution(resolution)
        c = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """images (B, channels, R, R) -> logits (B,). No batch norm, so R1 and gradient
    penalties (per-sample input gradients) stay well defined."""

    def __init__(self, resolution: int = 64, channels: int = 3, width: int = 64):
        super().__init__()
        stages = _check_resolution(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for _ in range(stages - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()

"""DCGAN (Radford et al. 2015) for 32x32 or 64x64 images, channel widths configurable;
`classes > 0` makes the class-conditional pair (models/conditional.py)."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.conditional import ClassBatchNorm2d, Projection, labels_for


def _check_resolution(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"DCGAN supports resolution 32 or 64, got {resolution}")
    return int(math.log2(resolution)) - 2  # number of stride-2 stages from/to 4x4


class DCGANGenerator(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> images (B, channels, R, R) in [-1, 1]. Conditional:
    every batch norm takes its gain and bias from the label."""

    def __init__(self, z_dim: int, resolution: int = 64, channels: int = 3, width: int = 64, classes: int = 0):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        # A label embedding concatenated with z was tried first: G learned to ignore z and drew
        # one image per class (pixel std across z 0.006 against 0.26 across classes, MNIST,
        # 90 kimg, with or without a spectrally normalised projection in D).
        norm = (lambda ch: ClassBatchNorm2d(classes, ch)) if classes else nn.BatchNorm2d
        stages = _check_resolution(resolution)
        c = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, c, 4, 1, 0, bias=False), norm(c), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z[:, :, None, None]
        if not self.classes:
            return self.net(h)
        labels = labels_for(c, z, self.classes)
        for layer in self.net:
            h = layer(h, labels) if isinstance(layer, ClassBatchNorm2d) else layer(h)
        return h


class DCGANDiscriminator(nn.Module):
    """images (B, channels, R, R) [, labels (B,)] -> logits (B,). No batch norm, so R1 and
    gradient penalties (per-sample input gradients) stay well defined. Conditional: a projection
    on the 4x4 features summed over space."""

    def __init__(self, resolution: int = 64, channels: int = 3, width: int = 64, classes: int = 0):
        super().__init__()
        stages = _check_resolution(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for _ in range(stages - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)
        self.project = Projection(classes, c) if classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net[:-1](x)
        out = self.net[-1](h).flatten()
        return out if self.project is None else out + self.project(h.sum((2, 3)), c)

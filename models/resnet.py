"""ResNet generator/discriminator for 32x32 (Miyato et al. 2018, SNGAN), spectral norm on D's
layers unless `spectral_norm=False` (R1/R2 alone then keep D smooth, as in R3GAN);
`classes > 0` makes the class-conditional pair (models/conditional.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from models.conditional import ClassBatchNorm2d, Projection, labels_for


class _GBlock(nn.Module):
    """Conditional (`classes > 0`): both batch norms take their gain and bias from the label."""

    def __init__(self, c_in: int, c_out: int, classes: int = 0):
        super().__init__()
        norm = (lambda ch: ClassBatchNorm2d(classes, ch)) if classes else nn.BatchNorm2d
        self.bn1, self.bn2 = norm(c_in), norm(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, labels=None):
        def bn(norm, h):
            return norm(h) if labels is None else norm(h, labels)

        h = F.interpolate(F.relu(bn(self.bn1, x)), scale_factor=2)
        h = self.conv2(F.relu(bn(self.bn2, self.conv1(h))))
        # upsampling commutes with the 1x1 skip: after it, the skip convolves a quarter of the positions
        return h + F.interpolate(self.skip(x), scale_factor=2)


# A 3x3 convolution (padding 1) followed by 2x2 average pooling is one 4x4 convolution at stride 2,
# padding 1, whose kernel is the 3x3 one spread over the pooling window: per axis, output tap t
# averages the 3x3 taps d and window offsets a with a + d = t. Same function, same gradients, a
# quarter of the positions and no pooling pass (at 32x32 on a CPU a third of the time).
_POOLED_TAPS = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]]) / 2


def _conv3x3_avgpool(x: torch.Tensor, conv: nn.Conv2d, taps: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, torch.einsum("ik,ockl,jl->ocij", taps, conv.weight, taps), conv.bias, stride=2, padding=1)


def _maybe_sn(module: nn.Module, on: bool) -> nn.Module:
    return parametrizations.spectral_norm(module) if on else module


class _DBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, sn: bool):
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = _maybe_sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = _maybe_sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.skip = _maybe_sn(nn.Conv2d(c_in, c_out, 1), sn)
        # a buffer, so it moves with the module: no host-to-device copy per call; not in checkpoints
        self.register_buffer("taps", _POOLED_TAPS.clone(), persistent=False)

    def forward(self, x):
        h = F.relu(self.conv1(x if self.first else F.relu(x)))
        if not self.down:
            return self.conv2(h) + self.skip(x)
        # pooling commutes with the 1x1 skip: pooled first, it convolves a quarter of the positions
        return _conv3x3_avgpool(h, self.conv2, self.taps) + self.skip(F.avg_pool2d(x, 2))


class ResNetGenerator(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> images (B, channels, 32, 32) in [-1, 1]. Conditional: the
    blocks' batch norms take their gain and bias from the label (SNGAN's conditional G). A label
    embedding concatenated with z drew one image per class here too (models/dcgan.py): MNIST,
    relativistic pairing with R1 + R2, 240 kimg."""

    def __init__(self, z_dim: int, resolution: int = 32, channels: int = 3, width: int = 128, classes: int = 0):
        super().__init__()
        if resolution != 32:
            raise ValueError(f"the ResNet pair is built for 32x32, got {resolution}")
        self.z_dim, self.width, self.classes = z_dim, width, classes
        self.fc = nn.Linear(z_dim, 4 * 4 * width)
        self.blocks = nn.ModuleList([_GBlock(width, width, classes) for _ in range(3)])
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        labels = labels_for(c, z, self.classes) if self.classes else None
        h = self.fc(z).view(-1, self.width, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return self.out(h)


class ResNetDiscriminator(nn.Module):
    """images (B, channels, 32, 32) [, labels (B,)] -> logits (B,); conditional: a projection
    on the pooled features."""

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 128, classes: int = 0,
                 spectral_norm: bool = True):
        super().__init__()
        if resolution != 32:
            raise ValueError(f"the ResNet pair is built for 32x32, got {resolution}")
        self.blocks = nn.Sequential(
            _DBlock(channels, width, down=True, first=True, sn=spectral_norm),
            _DBlock(width, width, down=True, first=False, sn=spectral_norm),
            _DBlock(width, width, down=False, first=False, sn=spectral_norm),
            _DBlock(width, width, down=False, first=False, sn=spectral_norm),
        )
        self.fc = _maybe_sn(nn.Linear(width, 1), spectral_norm)
        self.project = Projection(classes, width) if classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.fc(h).squeeze(1)
        return out if self.project is None else out + self.project(h, c)

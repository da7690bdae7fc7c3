"""pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks"): a U-Net generator that translates an image A into an image B, and a PatchGAN
discriminator that scores every overlapping patch of a pair (A, B) as real or fake.

Resolutions: powers of two from 8 up. Images are (B, C, R, R) in [-1, 1], as elsewhere.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# A conv followed by a norm has no bias (the norm subtracts it); the norm's gain and bias
# (affine, instance norm's too) stand in for it.
NORMS = {"batch": nn.BatchNorm2d, "instance": lambda ch: nn.InstanceNorm2d(ch, affine=True)}
DROPOUT_BLOCKS = 3   # the paper's decoder: dropout in its three innermost blocks ("CD512" x 3)
PATCH_LAYERS = 3     # stride-2 convs of the 70x70 PatchGAN


def _check(resolution: int, norm: str) -> int:
    """log2(resolution), once the arguments are known good."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"pix2pix needs a resolution that is a power of two >= 8, got {resolution}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return int(math.log2(resolution))


def _down(cin: int, cout: int, normed: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 4, 2, 1, bias=not normed)


class UNetGenerator(nn.Module):
    """A (B, in_channels, R, R) -> B (B, out_channels, R, R) in [-1, 1] (tanh).

    Takes no noise vector: as in the paper, the dropout of the innermost decoder blocks, left
    on when sampling, is G's only randomness (in eval mode G is deterministic).

    Encoder: log2(R) stride-2 4x4 convs down to 1x1, LeakyReLU(0.2) before each but the first,
    a norm after each but the first and the innermost. Decoder: stride-2 4x4 transposed convs
    back up, ReLU before each, each after the innermost reading its mirror encoder block's
    output concatenated on channels (the skips); a norm after each but the last, which ends in
    tanh. Encoder block i has min(width * 2**i, max_width) channels (64 ... 512 at R = 256, as
    the paper's).
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: int, width: int = 64,
                 max_width: int = 512, dropout: float = 0.5, norm: str = "batch"):
        super().__init__()
        depth = _check(resolution, norm)
        self.channels_a, self.channels, self.resolution = in_channels, out_channels, resolution
        ch = [min(width * 2 ** i, max_width) for i in range(depth)]
        self.down = nn.ModuleList([_down(in_channels, ch[0], normed=False)])
        for i in range(1, depth):
            # The innermost output is 1x1: a norm over one value per channel (and sample) is
            # degenerate, so pix2pix has none there.
            normed = i < depth - 1
            self.down.append(nn.Sequential(nn.LeakyReLU(0.2), _down(ch[i - 1], ch[i], normed),
                                           *([NORMS[norm](ch[i])] if normed else [])))
        self.up = nn.ModuleList([nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * ch[0], out_channels, 4, 2, 1),
                                               nn.Tanh())])
        for i in range(1, depth):
            cin = ch[i] if i == depth - 1 else 2 * ch[i]   # the innermost has no skip beside it
            noise = [nn.Dropout(dropout)] if dropout and i >= depth - DROPOUT_BLOCKS else []
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=False),
                                         NORMS[norm](ch[i - 1]), *noise))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        skips = []
        h = a
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.up[-1](skips.pop())
        for block in reversed(self.up[:-1]):
            h = block(torch.cat([skips.pop(), h], 1))
        return h


class PatchDiscriminator(nn.Module):
    """(A (B, in_channels_a, R, R), B (B, in_channels_b, R, R)) -> logits (B, 1, h, w): one per
    overlapping patch of the pair, which is concatenated on channels, so D judges B as a
    translation of this A.

    `layers` stride-2 4x4 convs (LeakyReLU 0.2, a norm after each but the first), then two
    stride-1 4x4 convs; at layers=3 a logit sees 70x70 pixels. The map is R / 2**layers - 2 on
    a side, so layers=None takes 3, or fewer where the map would be smaller than 2x2 (R < 32).

    The norm is per sample by default (instance): R1 and gradient penalties take per-sample
    input gradients, which batch norm would mix across the batch (DCGAN's D has no batch norm
    for the same reason); with the paper's batch size 1 the two coincide.
    """

    def __init__(self, in_channels_a: int, in_channels_b: int, resolution: int, width: int = 64,
                 layers: int | None = None, max_width: int = 512, norm: str = "instance"):
        super().__init__()
        deepest = _check(resolution, norm) - 2   # leaves a 4x4 map for the two stride-1 convs
        layers = min(PATCH_LAYERS, deepest) if layers is None else layers
        if not 1 <= layers <= deepest:
            raise ValueError(f"a PatchGAN at resolution {resolution} takes 1 to {deepest} layers "
                             f"(its map must stay 2x2 or more), got {layers}")
        self.channels_a, self.channels, self.resolution = in_channels_a, in_channels_b, resolution
        ch = [min(width * 2 ** i, max_width) for i in range(layers + 1)]
        blocks: list[nn.Module] = [_down(in_channels_a + in_channels_b, ch[0], normed=False), nn.LeakyReLU(0.2)]
        for i in range(1, layers):
            blocks += [_down(ch[i - 1], ch[i], normed=True), NORMS[norm](ch[i]), nn.LeakyReLU(0.2)]
        blocks += [nn.Conv2d(ch[layers - 1], ch[layers], 4, 1, 1, bias=False), NORMS[norm](ch[layers]),
                   nn.LeakyReLU(0.2), nn.Conv2d(ch[layers], 1, 4, 1, 1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], 1))

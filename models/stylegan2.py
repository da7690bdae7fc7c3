"""StyleGAN2-style generator (mapping network, modulated/demodulated convs, noise inputs, skip
toRGB outputs) and residual discriminator (minibatch std), built on models.ops.

Channel counts: a layer working at side r has min(width * resolution // r, max_channels)
channels, so the output resolution gets `width` and each halving of the side doubles it
(32 px, width 16: 4->128, 8->64, 16->32, 32->16). Resolutions are powers of two from 8 up.

Every layer uses equalized learning rate (weights drawn N(0, 1), scaled at run time). Left out
of this compact version: style mixing, truncation (w_avg) and path-length regularization.
`impl` is passed to every fused op ('auto' | 'ref' | 'triton'); tests use it to run the whole
network through the Triton kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.conditional import LabelEmbedding, Projection
from models.ops import ACTIVATIONS, bias_act, downsample2d, setup_filter, upsample2d

RESAMPLE_FILTER = [1, 3, 3, 1]


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")


def channels_at(side: int, resolution: int, width: int, max_channels: int) -> int:
    return min(width * (resolution // side), max_channels)


class FullyConnected(nn.Module):
    def __init__(self, in_features, out_features, act="linear", lr_mult=1.0, bias_init=0.0, impl="auto"):
        super().__init__()
        # Dividing the init by lr_mult and multiplying at run time slows this layer's learning.
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult
        self.act, self.impl = act, impl

    def forward(self, x):
        x = x @ (self.weight * self.weight_gain).to(x.dtype).t()
        return bias_act(x, self.bias * self.bias_gain, act=self.act, impl=self.impl)


class Conv2dLayer(nn.Module):
    """Equalized-lr conv with optional 2x low-pass downsampling before it and fused bias_act."""

    def __init__(self, in_ch, out_ch, kernel, bias=True, act="linear", down=False, conv_clamp=None, impl="auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_ch * kernel * kernel)
        self.down, self.act, self.conv_clamp, self.impl = down, act, conv_clamp, impl
        if down:
            self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))

    def forward(self, x, gain=1.0):
        if self.down:
            x = downsample2d(x, self.resample_filter, impl=self.impl)
        x = F.conv2d(x, (self.weight * self.weight_gain).to(x.dtype), padding=self.weight.shape[-1] // 2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.act, gain=ACTIVATIONS[self.act].def_gain * gain,
                        clamp=clamp, impl=self.impl)


def modulated_conv2d(x, weight, styles, demodulate=True):
    """Scale the conv's input channels per sample by `styles`, optionally renormalize each
    output channel to unit expected variance, and run all samples as one grouped conv."""
    B, in_ch, H, W = x.shape
    out_ch, _, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(B, 1, in_ch, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(B, out_ch, 1, 1, 1)
    x = F.conv2d(x.reshape(1, B * in_ch, H, W), w.reshape(B * out_ch, in_ch, kh, kw).to(x.dtype),
                 padding=kh // 2, groups=B)
    return x.reshape(B, out_ch, *x.shape[2:])


class SynthesisLayer(nn.Module):
    def __init__(self, in_ch, out_ch, w_dim, side, up=False, conv_clamp=None, impl="auto"):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_ch, bias_init=1, impl=impl)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(side, side))
        if up:
            self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))
        self.up, self.conv_clamp, self.impl = up, conv_clamp, impl

    def forward(self, x, w, noise_mode="random"):
        if self.up:
            x = upsample2d(x, self.resample_filter, impl=self.impl)
        x = modulated_conv2d(x, self.weight, self.affine(w))
        if noise_mode == "random":
            x = x + torch.randn_like(x[:, :1]) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp, impl=self.impl)


class ToRGB(nn.Module):
    def __init__(self, in_ch, img_channels, w_dim, conv_clamp=None, impl="auto"):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_ch, bias_init=1, impl=impl)
        self.weight = nn.Parameter(torch.randn(img_channels, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_ch)
        self.conv_clamp, self.impl = conv_clamp, impl

    def forward(self, x, w):
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp, impl=self.impl)


class SynthesisBlock(nn.Module):
    """One resolution: (upsample) conv, conv, toRGB added to the upsampled running image."""

    def __init__(self, in_ch, out_ch, w_dim, side, img_channels, conv_clamp=None, impl="auto"):
        super().__init__()
        self.first = in_ch == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(out_ch, side, side))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, side, up=True, conv_clamp=conv_clamp, impl=impl)
            self.register_buffer("resample_filter", setup_filter(RESAMPLE_FILTER))
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, side, conv_clamp=conv_clamp, impl=impl)
        self.torgb = ToRGB(out_ch, img_channels, w_dim, conv_clamp=conv_clamp, impl=impl)
        self.impl = impl

    def forward(self, x, img, w, noise_mode):
        if self.first:
            x = self.const.unsqueeze(0).expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w, noise_mode)
        x = self.conv1(x, w, noise_mode)
        y = self.torgb(x, w)
        if img is not None:
            y = y + upsample2d(img, self.resample_filter, impl=self.impl)
        return x, y


def _unit_second_moment(x):
    """Normalizing z (and a label's embedding) makes its scale irrelevant to the mapping."""
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class StyleGAN2Generator(nn.Module):
    """G(z [, labels]) -> images [B, channels, resolution, resolution], roughly in [-1, 1] once
    trained. Conditional (as StyleGAN2-ADA's c_dim): the label's embedding, normalized like z,
    enters the mapping network beside z."""

    def __init__(self, z_dim, w_dim, resolution, channels, width, mapping_layers,
                 max_channels=512, conv_clamp=None, impl="auto", classes=0):
        super().__init__()
        _check_resolution(resolution)
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        dims = [z_dim + (w_dim if classes else 0)] + [w_dim] * mapping_layers
        self.mapping = nn.Sequential(*[FullyConnected(i, o, act="lrelu", lr_mult=0.01, impl=impl)
                                       for i, o in zip(dims[:-1], dims[1:])])
        blocks, in_ch, side = [], 0, 4
        while side <= resolution:
            out_ch = channels_at(side, resolution, width, max_channels)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, side, channels, conv_clamp, impl))
            in_ch, side = out_ch, side * 2
        self.blocks = nn.ModuleList(blocks)
        self.embed = LabelEmbedding(classes, w_dim) if classes else None

    def forward(self, z, c=None, noise_mode="random"):
        """noise_mode: 'random' (training), 'const' (reproducible samples) or 'none'."""
        z = _unit_second_moment(z)
        if self.embed is not None:
            z = torch.cat([z, _unit_second_moment(self.embed(c, z))], 1)
        w = self.mapping(z)
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w, noise_mode)
        return img


class DiscriminatorBlock(nn.Module):
    """Residual: conv, conv + 2x down, plus a 1x1 downsampled skip, each scaled by sqrt(1/2)."""

    def __init__(self, in_ch, out_ch, conv_clamp=None, impl="auto"):
        super().__init__()
        self.conv0 = Conv2dLayer(in_ch, in_ch, 3, act="lrelu", conv_clamp=conv_clamp, impl=impl)
        self.conv1 = Conv2dLayer(in_ch, out_ch, 3, act="lrelu", down=True, conv_clamp=conv_clamp, impl=impl)
        self.skip = Conv2dLayer(in_ch, out_ch, 1, bias=False, down=True, impl=impl)

    def forward(self, x):
        gain = math.sqrt(0.5)
        return self.skip(x, gain=gain) + self.conv1(self.conv0(x), gain=gain)


def minibatch_std(x, group_size):
    """Append one channel: the std across each group of samples, averaged over C, H, W.
    The group is the largest divisor of the batch not above group_size."""
    B, C, H, W = x.shape
    G = next(g for g in range(min(group_size, B), 0, -1) if B % g == 0)
    y = x.reshape(G, -1, C, H, W).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])
    y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(G, 1, H, W)
    return torch.cat([x, y], dim=1)


class StyleGAN2Discriminator(nn.Module):
    """D(x [, labels]) -> logits [B] for images [B, channels, resolution, resolution];
    conditional: a projection on the last hidden features."""

    def __init__(self, resolution, channels, width, max_channels=512, mbstd_group=4,
                 conv_clamp=None, impl="auto", classes=0):
        super().__init__()
        _check_resolution(resolution)
        ch = lambda side: channels_at(side, resolution, width, max_channels)  # noqa: E731
        self.from_rgb = Conv2dLayer(channels, ch(resolution), 1, act="lrelu", conv_clamp=conv_clamp, impl=impl)
        sides = [resolution >> i for i in range(int(math.log2(resolution)) - 2)]  # resolution .. 8
        self.blocks = nn.Sequential(*[DiscriminatorBlock(ch(s), ch(s // 2), conv_clamp, impl) for s in sides])
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(ch(4) + 1, ch(4), 3, act="lrelu", conv_clamp=conv_clamp, impl=impl)
        self.fc = FullyConnected(ch(4) * 16, ch(4), act="lrelu", impl=impl)
        self.out = FullyConnected(ch(4), 1, impl=impl)
        self.project = Projection(classes, ch(4)) if classes else None

    def forward(self, x, c=None):
        x = self.blocks(self.from_rgb(x))
        x = self.conv(minibatch_std(x, self.mbstd_group))
        h = self.fc(x.flatten(1))
        out = self.out(h).squeeze(1)
        return out if self.project is None else out + self.project(h, c)

"""Config -> networks and optimizers. The only place that maps `model.arch` to a class."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config import OptimConfig, RunConfig


def build_networks(cfg: RunConfig, channels: int) -> tuple[nn.Module, nn.Module]:
    m = cfg.model
    if m.arch == "mlp":
        from models.mlp import MLPDiscriminator, MLPGenerator
        return MLPGenerator(m.z_dim, m.g_width, m.depth), MLPDiscriminator(m.d_width, m.depth)
    if m.arch == "dcgan":
        from models.dcgan import DCGANDiscriminator, DCGANGenerator
        return (DCGANGenerator(m.z_dim, m.resolution, channels, m.g_width),
                DCGANDiscriminator(m.resolution, channels, m.d_width))
    if m.arch == "resnet":
        from models.resnet import ResNetDiscriminator, ResNetGenerator
        return (ResNetGenerator(m.z_dim, m.resolution, channels, m.g_width),
                ResNetDiscriminator(m.resolution, channels, m.d_width))
    if m.arch == "stylegan2":
        from models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
        return (StyleGAN2Generator(m.z_dim, m.w_dim, m.resolution, channels, m.g_width, m.mapping_layers),
                StyleGAN2Discriminator(m.resolution, channels, m.d_width))
    raise ValueError(f"unknown model.arch {m.arch!r}")


def build_optimizer(params, o: OptimConfig) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a dozen ops per tensor; on small nets (the toys)
    # the per-tensor loop costs more than the math.
    return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), fused=True)

"""Class conditioning for every model family: the label embedding G reads and the projection
D adds to its logit (Miyato & Koyama 2018, "cGANs with Projection Discriminator").

Contract, for a network built with `classes=K > 0`:
- G(z, c) and D(x, c) take int64 labels c of shape (B,), values in [0, K).
- c=None means the classes 0..K-1 in turn (balanced), so a caller that draws unlabelled
  samples (FID, the health monitor) sees every class equally often.
With `classes=0` a network builds none of this, ignores c, and keeps its unconditional
parameters, state-dict keys and outputs exactly.
"""
from __future__ import annotations

import torch
from torch import nn


def labels_for(c: torch.Tensor | None, batch: torch.Tensor, classes: int) -> torch.Tensor:
    """`c`, or the classes in turn for the samples of `batch` when it is None. The batch size
    is read only then: torch.export keeps it dynamic when labels are given."""
    if c is None:
        return torch.arange(batch.shape[0], device=batch.device) % classes
    return c.to(batch.device)


class LabelEmbedding(nn.Module):
    """G's side: a learned vector per class, concatenated with z (or fed to a mapping network)."""

    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.classes = classes
        self.table = nn.Embedding(classes, dim)

    def forward(self, c: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """The embeddings of the labels of the latents z."""
        return self.table(labels_for(c, z, self.classes))


class ClassBatchNorm2d(nn.Module):
    """G's side in DCGAN: batch norm whose gain and bias are looked up per class (conditional
    batch norm, as in SNGAN's and BigGAN's generators). The class modulates every layer while z
    stays G's only input."""

    def __init__(self, classes: int, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.embed_gain = nn.Embedding(classes, channels)
        self.embed_bias = nn.Embedding(classes, channels)
        nn.init.ones_(self.embed_gain.weight)  # starts as plain batch norm
        nn.init.zeros_(self.embed_bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.embed_gain(c)[:, :, None, None] + self.embed_bias(c)[:, :, None, None]


class Projection(nn.Module):
    """D's side: logit += <embed(c), phi(x)>, with phi(x) D's last features (B, dim)."""

    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.classes = classes
        self.table = nn.Embedding(classes, dim)
        nn.init.normal_(self.table.weight, std=dim ** -0.5)  # starts as a small term beside D's logit

    def forward(self, features: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        labels = labels_for(c, features, self.classes)
        return (self.table(labels).to(features.dtype) * features).sum(1)

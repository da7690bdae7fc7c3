"""The ResNet pair's D: spectral norm on its layers is a config choice (model.d_spectral_norm)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import from_dict
from pipeline.worker import build_networks


def resnet_d(spectral_norm: bool) -> nn.Module:
    cfg = from_dict({"model": {"arch": "resnet", "resolution": 32, "g_width": 8, "d_width": 8,
                               "d_spectral_norm": spectral_norm}, "data": {"source": "shards", "path": "shards/"}})
    torch.manual_seed(0)
    return build_networks(cfg, channels=1)[1]


@pytest.mark.parametrize("on", [True, False])
def test_d_layers_have_unit_spectral_norm_only_when_asked(on):
    D = resnet_d(on)
    x = torch.randn(4, 1, 32, 32)
    for _ in range(30):  # training-mode forwards run the power iteration
        D(x)
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 13
    sigmas = torch.stack([torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2) for m in layers])
    if on:
        assert torch.allclose(sigmas, torch.ones_like(sigmas), atol=0.02), sigmas
    else:
        assert not any(hasattr(m, "parametrizations") for m in layers)
        assert (sigmas - 1).abs().max() > 0.1, sigmas  # PyTorch's own init, left alone

"""The ResNet pair: its blocks are SNGAN's as published, rearranged for speed; spectral norm on D's
layers is a config choice (model.d_spectral_norm)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.resnet import _DBlock, _GBlock

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


def sngan_d_block(b: _DBlock, x: torch.Tensor) -> torch.Tensor:
    """Miyato et al.'s block as written: convolve at full resolution, then pool both paths."""
    h = b.conv2(F.relu(b.conv1(x if b.first else F.relu(x))))
    s = b.skip(x)
    return F.avg_pool2d(h, 2) + F.avg_pool2d(s, 2) if b.down else h + s


def sngan_g_block(b: _GBlock, x: torch.Tensor) -> torch.Tensor:
    h = b.conv2(F.relu(b.bn2(b.conv1(F.interpolate(F.relu(b.bn1(x)), scale_factor=2)))))
    return h + b.skip(F.interpolate(x, scale_factor=2))


@pytest.mark.parametrize("block", ["d-first-down", "d-down", "d-flat", "d-down-sn", "g"])
def test_blocks_compute_the_published_block_and_its_gradients(block):
    torch.manual_seed(0)
    if block == "g":
        b, ref, x = _GBlock(6, 5), sngan_g_block, torch.randn(3, 6, 8, 8)
    else:
        first, down = block.startswith("d-first"), "down" in block
        b = _DBlock(1 if first else 6, 5, down=down, first=first, sn=block.endswith("sn"))
        ref, x = sngan_d_block, torch.randn(3, 1 if first else 6, 16, 16)
    # eval: fixed batch-norm statistics and spectral-norm vectors, so both calls see the same function;
    # float64: the two orders sum differently, and fp32 leaves 1e-5 of noise in a bias's gradient
    b, x = b.double().eval(), x.double().requires_grad_(True)
    params = [x, *b.parameters()]
    ours, theirs = b(x), ref(b, x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    w = torch.randn_like(ours)  # a generic cotangent: every output position weighs differently
    for g_ours, g_theirs in zip(torch.autograd.grad((ours * w).sum(), params),
                                torch.autograd.grad((theirs * w).sum(), params)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-9)

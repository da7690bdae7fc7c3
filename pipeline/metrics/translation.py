"""How close a translation G(A) is to its target B: L1, PSNR and SSIM, per image pair.

Images are float (N, C, H, W) in [-1, 1], as everywhere in gantry. L1 is measured on that
scale (the scale of pix2pix's L1 loss term); PSNR and SSIM on [0, 1], the scale their usual
constants assume, so the numbers compare with published ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5   # Wang et al. 2004
SSIM_K1, SSIM_K2 = 0.01, 0.03


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per pair (N,)."""
    return (x.float() - y.float()).abs().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per pair (N,), peak 1 on [0, 1]; identical images give
    100 dB (the MSE is floored at 1e-10), so one perfect image cannot make a set's mean inf."""
    mse = ((x.float() - y.float()) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(channels: int) -> torch.Tensor:
    t = torch.arange(SSIM_WINDOW, dtype=torch.float32) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-t.square() / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per pair (N,): the mean over pixels and channels of the SSIM map
    of an 11x11 Gaussian window (sigma 1.5), valid positions only, on [0, 1]."""
    x, y = (x.float() + 1) / 2, (y.float() + 1) / 2
    c = x.shape[1]
    w = _gaussian_window(c).to(x.device)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    var_x = F.conv2d(x * x, w, groups=c) - mu_x.square()
    var_y = F.conv2d(y * y, w, groups=c) - mu_y.square()
    cov = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def pair_scores(out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Means over a set of pairs of G(A) and B."""
    return {"l1": l1(out, target).mean().item(), "psnr": psnr(out, target).mean().item(),
            "ssim": ssim(out, target).mean().item()}

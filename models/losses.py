"""GAN losses and gradient regularizers on D's logits.

Every loss returns a per-sample tensor (B,), reduced by the caller in fp32, so the same
function serves a loss, a metric and a lazily scaled regularizer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("logistic", "hinge", "wgan-gp", "rpgan")


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss on a real and a fake batch of logits (same B). 'rpgan' (relativistic pairing,
    Jolicoeur-Martineau 2019; the loss of Huang et al. 2024's R3GAN) pairs real i with fake i:
    softplus(D(fake) - D(real))."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "logistic":
        return F.softplus(-real) + F.softplus(fake)
    if kind == "hinge":
        return F.relu(1 - real) + F.relu(1 + fake)
    if kind == "wgan-gp":
        return fake - real
    if kind == "rpgan":
        return F.softplus(fake - real)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def g_loss(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """G's loss. 'logistic' is the non-saturating form: G maximises log D(G(z)). 'rpgan' needs
    the logits of a real batch of the same size, paired as in d_loss: softplus(D(real) - D(fake))."""
    fake = fake_logits.float()
    if kind == "rpgan":
        if real_logits is None:
            raise ValueError("the rpgan G loss pairs each fake with a real sample: pass real_logits")
        return F.softplus(real_logits.float() - fake)
    if kind == "logistic":
        return F.softplus(-fake)
    if kind in ("hinge", "wgan-gp"):
        return -fake
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def best_of(loss: torch.Tensor, share: float) -> torch.Tensor:
    """Top-k training (Sinha et al. 2020): G learns from the `share` of its batch that D rates
    best, the samples of lowest G loss; the others' losses become 0 and the kept ones are scaled
    by B/k, so the batch mean is the mean over the kept. A share that keeps every sample returns
    `loss` itself."""
    n = loss.shape[0]
    k = max(1, round(share * n))
    if k >= n:
        return loss
    keep = torch.zeros_like(loss)
    keep[loss.detach().topk(k, largest=False).indices] = n / k
    return loss * keep


def fp32_forward(D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (x as an fp32 leaf that requires grad, D(x) in fp32 outside autocast). fp32 on purpose:
    squared gradient norms underflow and overflow in half precision."""
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return x, D(x).float()


def _input_grad(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_x of out.sum(), flattened per sample, with its graph (a penalty of it trains D)."""
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1)


def grad_penalty(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) from logits already computed: ||grad_x D(x)||^2 per sample (B,),
    `out` = D(x) for a leaf x that requires grad. On real samples it is R1, on generated ones R2.
    D's main step uses it directly when plain regularization shares that step's forward."""
    return _input_grad(out, x).square().sum(1)


def r1_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """R1 on its own forward of D, in fp32: `grad_penalty` of D(real).

    `+ 0 * D(x)` gives every D parameter a gradient, zero where R1 does not reach it (D's last
    bias): then one process, DDP and ZeRO's flat partitions all step the same parameter set
    (StyleGAN2-ADA does the same)."""
    x, out = fp32_forward(D, real)
    return grad_penalty(out, x) + 0 * out


def gradient_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D||-1)^2 on random interpolates, per sample (B,)."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    t = torch.rand(shape, device=real.device, generator=generator)
    mixed = t * real.detach().float() + (1 - t) * fake.detach().float()
    x, out = fp32_forward(D, mixed)
    return (_input_grad(out, x).norm(dim=1) - 1).square()

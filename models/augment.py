"""Differentiable augmentation for D: DiffAugment ops, optionally gated by an adaptive p (ADA).

D sees every image, real and fake, through the same `augment` (Zhao et al. 2020, "Differentiable
Augmentation"), so it cannot learn the augmentations as a cue and G still gets gradients
through them. With little data, D memorises the training set; ADA (Karras et al. 2020) measures
that as r_t = E[sign(D(real))] and raises the augmentation probability p while r_t is above a
target (0.6), lowers it below. Each op is applied to each sample independently with
probability p, so p = 0 is the identity and p = 1 is plain DiffAugment.

Images are float (B, C, H, W) in about [-1, 1]. Every op is built from arithmetic and indexing
only, so gradients of any order flow to the input (R1 through augmented reals works).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

TRANSLATION = 0.125  # max shift, as a fraction of the side (DiffAugment's default)
CUTOUT = 0.5         # side of the cut square, as a fraction of the image side


def _per_sample(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=generator)


def _color(x: torch.Tensor, gate: torch.Tensor, generator) -> torch.Tensor:
    brightness = (_per_sample(x, generator) - 0.5) * gate
    x = x + brightness
    saturation = torch.where(gate > 0, _per_sample(x, generator) * 2, 1.0)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation + mean
    contrast = torch.where(gate > 0, _per_sample(x, generator) + 0.5, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean


def _translation(x: torch.Tensor, gate: torch.Tensor, generator) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5)
    g = gate.view(b, 1, 1).long()
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device, generator=generator) * g
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device, generator=generator) * g
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    # Index a copy padded by one zero pixel; sources that fall off the image land on the pad.
    iy = (ys + dy + 1).clamp(0, h + 1)
    ix = (xs + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, iy, ix].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, gate: torch.Tensor, generator) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    keep = 1.0 - (inside & (gate.view(b, 1, 1) > 0)).to(x.dtype)
    return x * keep.unsqueeze(1)


OPS: dict[str, Callable] = {"color": _color, "translation": _translation, "cutout": _cutout}


def parse_policy(policy: str) -> list[str]:
    """'color,translation' -> ['color', 'translation']; unknown names raise ValueError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; expected some of {', '.join(OPS)}")
    return names


def augment(x: torch.Tensor, policy: str | list[str], p: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply each op of `policy` in order, each to each sample with probability p."""
    names = parse_policy(policy) if isinstance(policy, str) else policy
    if p <= 0 or not names:
        return x
    for name in names:
        gate = (_per_sample(x, generator) < p).to(x.dtype)
        x = OPS[name](x, gate, generator)
    return x


class AdaptiveP:
    """ADA's controller: every `interval` updates, p += sign(r_t - target) * images / (kimg * 1000).

    `update` keeps its sums on the logits' device and reads them once per interval. Under data
    parallelism pass `reduce` (e.g. an all-reduce mean): it is applied to [sum of signs, count],
    whose ratio r_t is the same whether those are summed or averaged over ranks.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, kimg: float = 100.0, p: float = 0.0):
        if not 0 < target < 1 or interval <= 0 or kimg <= 0:
            raise ValueError(f"need 0 < target < 1, interval > 0, kimg > 0; got {target}, {interval}, {kimg}")
        self.target, self.interval, self.kimg, self.p = target, interval, kimg, float(p)
        self.r_t = 0.0  # the last measured E[sign(D(real))], for logging
        self._stats: torch.Tensor | None = None
        self._calls = 0
        self._images = 0

    def update(self, real_logits: torch.Tensor, batch: int,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Record one D step on `batch` real images (global count) with these logits."""
        logits = real_logits.detach().float().flatten()
        stats = torch.stack([logits.sign().sum(), torch.tensor(float(logits.numel()), device=logits.device)])
        self._stats = stats if self._stats is None else self._stats + stats
        self._calls += 1
        self._images += batch
        if self._calls % self.interval:
            return
        total = reduce(self._stats) if reduce else self._stats
        sign_sum, count = total.tolist()
        self.r_t = sign_sum / max(count, 1.0)
        step = self._images / (self.kimg * 1000)
        self.p = min(max(self.p + (step if self.r_t > self.target else -step), 0.0), 1.0)
        self._stats, self._images = None, 0

    def state_dict(self) -> dict:
        stats = [0.0, 0.0] if self._stats is None else self._stats.tolist()
        return {"p": self.p, "r_t": self.r_t, "calls": self._calls, "images": self._images, "stats": stats}

    def load_state_dict(self, d: dict) -> None:
        self.p, self.r_t = float(d["p"]), float(d["r_t"])
        self._calls, self._images = int(d["calls"]), int(d["images"])
        self._stats = torch.tensor(d["stats"]) if any(d["stats"]) else None


class Augment:
    """What the trainer holds: `aug(x)` before every D call; `aug.observe(...)` after D on reals.

    kind 'none': identity. 'diffaugment': every op on every sample (p = 1). 'ada': p adapts.
    """

    def __init__(self, kind: str = "none", policy: str = "color,translation,cutout",
                 target: float = 0.6, interval: int = 4, kimg: float = 100.0):
        if kind not in ("none", "diffaugment", "ada"):
            raise ValueError(f"unknown augment kind {kind!r}; expected none, diffaugment or ada")
        self.kind, self.policy = kind, parse_policy(policy)
        self.ada = AdaptiveP(target, interval, kimg) if kind == "ada" else None

    @property
    def p(self) -> float:
        if self.ada:
            return self.ada.p
        return 1.0 if self.kind == "diffaugment" else 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.policy, self.p)

    def observe(self, real_logits: torch.Tensor, batch: int, reduce=None) -> None:
        if self.ada:
            self.ada.update(real_logits, batch, reduce)

    def state_dict(self) -> dict:
        return self.ada.state_dict() if self.ada else {}

    def load_state_dict(self, d: dict) -> None:
        if self.ada and d:
            self.ada.load_state_dict(d)

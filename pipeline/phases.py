"""The phases of one training step: what each one computes from (G, D, batch).

A phase names the network it updates, how often it runs, what data it draws, and its loss.
The loss kind and the regularizers are chosen here, once, when the phases are built; a
phase's loss never branches on the config. Under autocast the networks run in the chosen
precision; losses reduce in fp32 and R1 / the gradient penalty run in fp32 (models/losses.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from models.augment import Augment
from models.losses import d_loss, g_loss, gradient_penalty, r1_penalty
from pipeline.config import RunConfig
from pipeline.precision import Precision


@dataclass
class Batch:
    real: torch.Tensor | None  # this rank's real samples (None before the first draw)
    z: torch.Tensor            # latents for G
    c: torch.Tensor | None = None    # the real samples' labels (conditional runs only)
    c_z: torch.Tensor | None = None  # the classes G draws for z (conditional runs only)


Stats = dict[str, torch.Tensor]
LossFn = Callable[[Callable, Callable, Batch], tuple[torch.Tensor, Stats]]


@dataclass
class Phase:
    name: str
    net: Literal["G", "D"]  # the network this phase updates
    interval: int  # runs on steps divisible by this
    repeat: int  # times per step (n_critic for D's main phase)
    gain: float  # lazy regularization runs 1/interval as often, so it is scaled by interval
    draws: Literal["real", "latents", "same"]  # a new real batch with latents, new latents only, or the last batch
    loss: LossFn  # (G, D, batch) -> (per-sample loss, stats)


def build_phases(cfg: RunConfig, augment: Augment, precision: Precision,
                 reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[Phase]:
    """D main (x n_critic), lazy R1 on the reals D main just saw, G main. `reduce` averages a
    statistic over ranks (ADA's overfitting signal must agree everywhere)."""
    kind, gp_weight, r1_gamma = cfg.loss.kind, cfg.loss.gp_weight, cfg.loss.r1_gamma
    global_batch = cfg.train.batch

    def D_aug(D, c):
        return lambda x: D(augment(x), c)

    def d_forward(G, D, batch):
        with precision.autocast():
            fake = G(batch.z, batch.c_z)
            real_logits, fake_logits = D(augment(batch.real), batch.c), D(augment(fake), batch.c_z)
        augment.observe(real_logits, batch=global_batch, reduce=reduce)
        stats = {"D_real": real_logits.detach().float().mean(), "D_fake": fake_logits.detach().float().mean()}
        return d_loss(kind, real_logits, fake_logits), stats, fake

    def d_main(G, D, batch):
        loss, stats, _ = d_forward(G, D, batch)
        return loss, stats

    def d_main_gp(G, D, batch):
        loss, stats, fake = d_forward(G, D, batch)
        gp = gradient_penalty(D_aug(D, batch.c), batch.real, fake)
        stats["gp"] = gp.detach().mean()
        return loss + gp_weight * gp, stats

    def d_r1(G, D, batch):
        r1 = r1_penalty(D_aug(D, batch.c), batch.real)
        return r1 * (r1_gamma / 2), {"r1": r1.detach().mean()}

    def g_main(G, D, batch):
        with precision.autocast():
            fake_logits = D(augment(G(batch.z, batch.c_z)), batch.c_z)
        return g_loss(kind, fake_logits), {}

    phases = [Phase("D_main", "D", 1, cfg.train.n_critic, 1.0, "real", d_main_gp if kind == "wgan-gp" else d_main)]
    if r1_gamma > 0:
        interval = cfg.loss.r1_interval
        phases.append(Phase("D_r1", "D", interval, 1, float(interval), "same", d_r1))
    phases.append(Phase("G_main", "G", 1, 1, 1.0, "latents", g_main))
    return phases

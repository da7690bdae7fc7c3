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
    real: torch.Tensor | None  # this rank's real samples (None before the first draw); pix2pix: the targets B
    z: torch.Tensor            # latents for G (unused by pix2pix)
    c: torch.Tensor | None = None    # the real samples' labels (conditional runs), or pix2pix's inputs A
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
    """The phases of the configured model family."""
    if cfg.is_translation:
        return translation_phases(cfg, precision)
    return generation_phases(cfg, augment, precision, reduce)


PenaltyD = Callable[[Callable, Batch, bool], Callable[[torch.Tensor], torch.Tensor]]
MakeFake = Callable[[Callable, Batch], torch.Tensor]


def _d_phases(cfg: RunConfig, d_forward, penalty_D: PenaltyD, make_fake: MakeFake) -> list[Phase]:
    """D main (x n_critic; with the gradient penalty under wgan-gp), then R1 on the reals D main
    just saw and R2 on fakes of the same latents (inputs), lazy at `r1_interval` (1: plain).
    `d_forward(G, D, batch) -> (loss, stats, fake)`; `penalty_D(D, batch, fake)` is the function
    of a real (fake=False) or generated sample the penalties differentiate (per-sample logits);
    `make_fake(G, batch)` is G's output for the batch."""
    gp_weight, r1_gamma, r2_gamma = cfg.loss.gp_weight, cfg.loss.r1_gamma, cfg.loss.r2_gamma

    def d_main(G, D, batch):
        loss, stats, _ = d_forward(G, D, batch)
        return loss, stats

    def d_main_gp(G, D, batch):
        loss, stats, fake = d_forward(G, D, batch)
        gp = gradient_penalty(penalty_D(D, batch, False), batch.real, fake)
        stats["gp"] = gp.detach().mean()
        return loss + gp_weight * gp, stats

    def d_r1(G, D, batch):
        r1 = r1_penalty(penalty_D(D, batch, False), batch.real)
        return r1 * (r1_gamma / 2), {"r1": r1.detach().mean()}

    def d_r2(G, D, batch):
        with torch.no_grad():
            fake = make_fake(G, batch)
        r2 = r1_penalty(penalty_D(D, batch, True), fake)
        return r2 * (r2_gamma / 2), {"r2": r2.detach().mean()}

    phases = [Phase("D_main", "D", 1, cfg.train.n_critic, 1.0, "real",
                    d_main_gp if cfg.loss.kind == "wgan-gp" else d_main)]
    interval = cfg.loss.r1_interval
    if r1_gamma > 0:
        phases.append(Phase("D_r1", "D", interval, 1, float(interval), "same", d_r1))
    if r2_gamma > 0:
        phases.append(Phase("D_r2", "D", interval, 1, float(interval), "same", d_r2))
    return phases


def generation_phases(cfg: RunConfig, augment: Augment, precision: Precision,
                      reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[Phase]:
    """G draws from noise: D's phases, then G main on new latents (rpgan also reads D on the
    real batch D main saw, which the new latents keep). `reduce` averages a statistic over
    ranks (ADA's overfitting signal must agree everywhere)."""
    kind, global_batch = cfg.loss.kind, cfg.train.batch

    def d_forward(G, D, batch):
        with precision.autocast():
            fake = G(batch.z, batch.c_z)
            real_logits, fake_logits = D(augment(batch.real), batch.c), D(augment(fake), batch.c_z)
        augment.observe(real_logits, batch=global_batch, reduce=reduce)
        stats = {"D_real": real_logits.detach().float().mean(), "D_fake": fake_logits.detach().float().mean()}
        return d_loss(kind, real_logits, fake_logits), stats, fake

    def g_main(G, D, batch):
        with precision.autocast():
            fake_logits = D(augment(G(batch.z, batch.c_z)), batch.c_z)
            real_logits = D(augment(batch.real), batch.c) if kind == "rpgan" else None
        return g_loss(kind, fake_logits, real_logits), {}

    def penalty_D(D, batch, fake):
        return lambda x: D(augment(x), batch.c_z if fake else batch.c)

    def make_fake(G, batch):
        return G(batch.z, batch.c_z)

    return _d_phases(cfg, d_forward, penalty_D, make_fake) + [Phase("G_main", "G", 1, 1, 1.0, "latents", g_main)]


def translation_phases(cfg: RunConfig, precision: Precision) -> list[Phase]:
    """pix2pix (batch.c is A, batch.real is B): D judges (A, B) pairs patch by patch; G's loss is
    adv_weight x the adversarial term + l1_weight x |G(A) - B|, on the batch D just saw, as in
    the paper. A patch map's loss is its mean, per sample. adv_weight 0 is the L1-only baseline:
    D has nothing to teach, so it does not train. G reports its adversarial term as `adv`: with
    the L1 term beside it, that is where the health monitor looks for divergence."""
    kind, l1_weight, adv_weight = cfg.loss.kind, cfg.loss.l1_weight, cfg.loss.adv_weight

    def per_sample(logits):
        return logits.float().flatten(1).mean(1)

    def d_forward(G, D, batch):
        with precision.autocast():
            fake = G(batch.c)
            real_logits, fake_logits = per_sample(D(batch.c, batch.real)), per_sample(D(batch.c, fake))
        stats = {"D_real": real_logits.detach().mean(), "D_fake": fake_logits.detach().mean()}
        return d_loss(kind, real_logits, fake_logits), stats, fake

    def g_main(G, D, batch):
        with precision.autocast():
            fake = G(batch.c)
            real_logits = per_sample(D(batch.c, batch.real)) if adv_weight and kind == "rpgan" else None
            adv = g_loss(kind, per_sample(D(batch.c, fake)), real_logits) if adv_weight else None
        l1 = (fake.float() - batch.real.float()).abs().flatten(1).mean(1)
        if adv is None:
            return l1_weight * l1, {"l1": l1.detach().mean()}
        return adv_weight * adv + l1_weight * l1, {"l1": l1.detach().mean(), "adv": adv.detach().mean()}

    def penalty_D(D, batch, fake):
        return lambda b: per_sample(D(batch.c, b))

    def make_fake(G, batch):
        return G(batch.c)

    if not adv_weight:
        return [Phase("G_main", "G", 1, 1, 1.0, "real", g_main)]
    return _d_phases(cfg, d_forward, penalty_D, make_fake) + [Phase("G_main", "G", 1, 1, 1.0, "same", g_main)]

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
from models.losses import best_of, d_loss, g_loss, grad_penalty, gradient_penalty, r1_penalty
from pipeline.config import RunConfig
from pipeline.precision import Precision
from pipeline.schedules import cosine


@dataclass
class Batch:
    real: torch.Tensor | None  # this rank's real samples (None before the first draw); pix2pix: the targets B
    z: torch.Tensor            # latents for G (unused by pix2pix)
    c: torch.Tensor | None = None    # the real samples' labels (conditional runs), or pix2pix's inputs A
    c_z: torch.Tensor | None = None  # the classes G draws for z (conditional runs only)
    kimg: float = 0.0  # training progress when drawn: where ramped weights (γ) stand


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


MakeFake = Callable[[Callable, Batch], torch.Tensor]
Judge = Callable[[Callable, Batch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PenaltyD = Callable[[Callable, Batch, bool], Callable[[torch.Tensor], torch.Tensor]]


def _d_phases(cfg: RunConfig, precision: Precision, make_fake: MakeFake, judge: Judge,
              penalty_D: PenaltyD) -> list[Phase]:
    """D main (x n_critic; with the gradient penalty under wgan-gp), R1 on the reals D main saw
    and R2 on fakes of the same latents (inputs). Lazy at `r1_interval`, each in a phase of its
    own forward; plain (interval 1) in an fp32 run, inside D main on that phase's own forward,
    which saves a D forward and an optimizer step per penalty (StyleGAN2-ADA's `Dboth`). Under
    autocast they keep their own fp32 forward: the penalties must not be taken in half precision.
    γ follows the cosine ramp of `loss.gamma_end`.

    `make_fake(G, batch)` is G's output for the batch; `judge(D, batch, real, fake)` D's
    per-sample logits of both; `penalty_D(D, batch, fake)` the function of a real (fake=False)
    or generated sample that the separate penalty phases differentiate."""
    kind, gp_weight, interval = cfg.loss.kind, cfg.loss.gp_weight, cfg.loss.r1_interval
    r1_gamma, r2_gamma = cfg.loss.r1_gamma, cfg.loss.r2_gamma

    def ramp(batch):
        return cosine(1.0, cfg.loss.gamma_end, batch.kimg, cfg.ramp_kimg)

    def judged(G, D, batch):
        with precision.autocast():
            fake = make_fake(G, batch)
            real_logits, fake_logits = judge(D, batch, batch.real, fake)
        return d_loss(kind, real_logits, fake_logits), _logit_stats(real_logits, fake_logits), fake

    def d_main(G, D, batch):
        return judged(G, D, batch)[:2]

    def d_main_gp(G, D, batch):
        loss, stats, fake = judged(G, D, batch)
        gp = gradient_penalty(penalty_D(D, batch, False), batch.real, fake)
        stats["gp"] = gp.detach().mean()
        return loss + gp_weight * gp, stats

    def d_main_plain_penalties(G, D, batch):
        with torch.no_grad():
            fake = make_fake(G, batch)
        real = batch.real.detach().float().requires_grad_(r1_gamma > 0)
        fake = fake.float().requires_grad_(r2_gamma > 0)
        real_logits, fake_logits = judge(D, batch, real, fake)
        loss, stats = d_loss(kind, real_logits, fake_logits), _logit_stats(real_logits, fake_logits)
        for name, gamma, x, logits in (("r1", r1_gamma, real, real_logits), ("r2", r2_gamma, fake, fake_logits)):
            if gamma > 0:
                penalty = grad_penalty(logits.float(), x)
                loss = loss + penalty * (gamma / 2 * ramp(batch))
                stats[name] = penalty.detach().mean()
        return loss, stats

    def d_r1(G, D, batch):
        r1 = r1_penalty(penalty_D(D, batch, False), batch.real)
        return r1 * (r1_gamma / 2 * ramp(batch)), {"r1": r1.detach().mean()}

    def d_r2(G, D, batch):
        with torch.no_grad():
            fake = make_fake(G, batch)
        r2 = r1_penalty(penalty_D(D, batch, True), fake)
        return r2 * (r2_gamma / 2 * ramp(batch)), {"r2": r2.detach().mean()}

    if kind != "wgan-gp" and interval == 1 and precision.dtype is None and (r1_gamma > 0 or r2_gamma > 0):
        return [Phase("D_main", "D", 1, cfg.train.n_critic, 1.0, "real", d_main_plain_penalties)]
    phases = [Phase("D_main", "D", 1, cfg.train.n_critic, 1.0, "real", d_main_gp if kind == "wgan-gp" else d_main)]
    if r1_gamma > 0:
        phases.append(Phase("D_r1", "D", interval, 1, float(interval), "same", d_r1))
    if r2_gamma > 0:
        phases.append(Phase("D_r2", "D", interval, 1, float(interval), "same", d_r2))
    return phases


def _logit_stats(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> Stats:
    return {"D_real": real_logits.detach().float().mean(), "D_fake": fake_logits.detach().float().mean()}


def generation_phases(cfg: RunConfig, augment: Augment, precision: Precision,
                      reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[Phase]:
    """G draws from noise: D's phases, then G main on new latents (rpgan also reads D on the
    real batch D main saw, which the new latents keep). G learns from the share of its fakes
    that D rates best, falling from all of them to `loss.g_topk` along the run's cosine ramp
    (top-k training; early on every fake is bad and all must teach). `reduce` averages a
    statistic over ranks (ADA's overfitting signal must agree everywhere)."""
    kind, global_batch = cfg.loss.kind, cfg.train.batch

    def make_fake(G, batch):
        return G(batch.z, batch.c_z)

    def judge(D, batch, real, fake):
        real_logits, fake_logits = D(augment(real), batch.c), D(augment(fake), batch.c_z)
        augment.observe(real_logits, batch=global_batch, reduce=reduce)
        return real_logits, fake_logits

    def penalty_D(D, batch, fake):
        return lambda x: D(augment(x), batch.c_z if fake else batch.c)

    def g_main(G, D, batch):
        with precision.autocast():
            fake_logits = D(augment(G(batch.z, batch.c_z)), batch.c_z)
            real_logits = D(augment(batch.real), batch.c) if kind == "rpgan" else None
        share = cosine(1.0, cfg.loss.g_topk, batch.kimg, cfg.ramp_kimg)
        return best_of(g_loss(kind, fake_logits, real_logits), share), {}

    return _d_phases(cfg, precision, make_fake, judge, penalty_D) + [
        Phase("G_main", "G", 1, 1, 1.0, "latents", g_main)]


def translation_phases(cfg: RunConfig, precision: Precision) -> list[Phase]:
    """pix2pix (batch.c is A, batch.real is B): D judges (A, B) pairs patch by patch; G's loss is
    adv_weight x the adversarial term + l1_weight x |G(A) - B|, on the batch D just saw, as in
    the paper. A patch map's loss is its mean, per sample. adv_weight 0 is the L1-only baseline:
    D has nothing to teach, so it does not train. G reports its adversarial term as `adv`: with
    the L1 term beside it, that is where the health monitor looks for divergence."""
    kind, l1_weight, adv_weight = cfg.loss.kind, cfg.loss.l1_weight, cfg.loss.adv_weight

    def per_sample(logits):
        return logits.float().flatten(1).mean(1)

    def make_fake(G, batch):
        return G(batch.c)

    def judge(D, batch, real, fake):
        return per_sample(D(batch.c, real)), per_sample(D(batch.c, fake))

    def penalty_D(D, batch, fake):
        return lambda b: per_sample(D(batch.c, b))

    def g_main(G, D, batch):
        with precision.autocast():
            fake = G(batch.c)
            real_logits = per_sample(D(batch.c, batch.real)) if adv_weight and kind == "rpgan" else None
            adv = g_loss(kind, per_sample(D(batch.c, fake)), real_logits) if adv_weight else None
        l1 = (fake.float() - batch.real.float()).abs().flatten(1).mean(1)
        if adv is None:
            return l1_weight * l1, {"l1": l1.detach().mean()}
        return adv_weight * adv + l1_weight * l1, {"l1": l1.detach().mean(), "adv": adv.detach().mean()}

    if not adv_weight:
        return [Phase("G_main", "G", 1, 1, 1.0, "real", g_main)]
    return _d_phases(cfg, precision, make_fake, judge, penalty_D) + [Phase("G_main", "G", 1, 1, 1.0, "same", g_main)]

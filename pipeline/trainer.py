"""The alternating GAN loop. One training step, top to bottom:

    for each phase (D_main x n_critic, D_r1 every r1_interval steps, G_main):
        make that network trainable, the other frozen
        loss = phase.loss(G, D)                 # under autocast; reductions in fp32
        strategy.backward(net, loss * gain)     # lazy regularizers scale by their interval
        strategy.step(net)                      # skipped and counted if the gradient is non-finite
    update G_ema; count images

Everything distributed hides behind `strategy`; everything logged goes through `tracker`.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from models.augment import Augment
from models.ema import ema_beta, update_ema
from models.losses import d_loss, g_loss, gradient_penalty, r1_penalty
from pipeline import checkpoint
from pipeline.build import build_networks, build_optimizer
from pipeline.config import RunConfig
from pipeline.errors import GantryError
from pipeline.evaluation import quality_score
from pipeline.health import Decision, HealthMonitor
from pipeline.precision import choose_precision
from pipeline.strategy import Strategy
from pipeline.tracking import Tracker

LossFn = Callable[[Callable, Callable], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Phase:
    name: str
    net: str  # the network this phase updates: "G" or "D"
    interval: int  # runs on steps divisible by this
    repeat: int  # times per step (n_critic for D's main phase)
    gain: float  # lazy regularization runs 1/interval as often, so it is scaled by interval
    loss: LossFn  # (G, D) -> (per-sample loss, stats)


class Trainer:
    def __init__(self, cfg: RunConfig, strategy: Strategy, stream, tracker: Tracker,
                 run_dir: Path, evaluator, channels: int):
        self.cfg, self.strategy, self.stream, self.tracker = cfg, strategy, stream, tracker
        self.run_dir, self.evaluator, self.channels = Path(run_dir), evaluator, channels
        self.device = strategy.device
        self.local_batch = cfg.train.batch // strategy.world_size
        self.precision = choose_precision(cfg.train, self.device, image_model=not cfg.is_toy)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G, D = build_networks(cfg, channels)
        fmt = torch.channels_last if self.precision.channels_last else torch.preserve_format
        G, D = G.to(self.device, memory_format=fmt), D.to(self.device, memory_format=fmt)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.optimizers = {"G": build_optimizer(G.parameters(), cfg.g_optim),
                           "D": build_optimizer(D.parameters(), cfg.d_optim)}
        strategy.setup({"G": G, "D": D}, self.optimizers, self.precision)
        a = cfg.augment
        self.augment = Augment(a.kind, a.policy, a.ada_target, a.ada_interval, a.ada_kimg)
        self.health = HealthMonitor.from_config(cfg.health) if cfg.health.enabled else None
        if self.health and cfg.loss.kind == "wgan-gp":
            self.health.d_floor = self.health.max_loss = 0.0  # critic values are unbounded by design
        self.lr_scale = 1.0  # lowered by health rollbacks
        torch.manual_seed(cfg.seed * 1009 + strategy.rank)  # each rank draws its own latents
        self.phases = self._phases()
        self.step = 0
        self.nimg = 0
        self.last_eval: dict[str, float] = {}
        self.best_score: float | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._real: torch.Tensor | None = None
        # Called on every rank after each save (path on rank 0, None elsewhere); launchers use
        # it to report checkpoints, e.g. to Ray Train.
        self.on_checkpoint: Callable[[Path | None, dict], None] | None = None

    # ---- phases -------------------------------------------------------------------------

    def _phases(self) -> list[Phase]:
        c = self.cfg
        phases = [Phase("D_main", "D", 1, c.train.n_critic, 1.0, self._d_main)]
        if c.loss.r1_gamma > 0:
            phases.append(Phase("D_r1", "D", c.loss.r1_interval, 1, float(c.loss.r1_interval), self._d_r1))
        phases.append(Phase("G_main", "G", 1, 1, 1.0, self._g_main))
        return phases

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.z_dim, device=self.device)

    def _next_real(self) -> torch.Tensor:
        x, _ = next(self.stream)
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _d_main(self, G, D):
        self._real = self._next_real()
        with self.precision.autocast():
            fake = G(self._latents(len(self._real)))  # an epoch's last batch may be short
            real_logits, fake_logits = D(self.augment(self._real)), D(self.augment(fake))
        self.augment.observe(real_logits, batch=self.cfg.train.batch, reduce=self.strategy.all_reduce_mean)
        loss = d_loss(self.cfg.loss.kind, real_logits, fake_logits)
        stats = {"D_real": real_logits.detach().float().mean(), "D_fake": fake_logits.detach().float().mean()}
        if self.cfg.loss.kind == "wgan-gp":
            gp = gradient_penalty(lambda x: D(self.augment(x)), self._real, fake)
            loss = loss + self.cfg.loss.gp_weight * gp
            stats["gp"] = gp.detach().mean()
        return loss, stats

    def _d_r1(self, G, D):
        r1 = r1_penalty(lambda x: D(self.augment(x)), self._real)
        return r1 * (self.cfg.loss.r1_gamma / 2), {"r1": r1.detach().mean()}

    def _g_main(self, G, D):
        with self.precision.autocast():
            fake_logits = D(self.augment(G(self._latents(self.local_batch))))
        return g_loss(self.cfg.loss.kind, fake_logits), {}

    # ---- one step -----------------------------------------------------------------------

    def train_step(self) -> None:
        for phase in self.phases:
            if self.step % phase.interval:
                continue
            for name in ("G", "D"):
                self.strategy.module(name).requires_grad_(name == phase.net)
            G = self.strategy.forward_fn("G", training=phase.net == "G")
            D = self.strategy.forward_fn("D", training=phase.net == "D")
            for _ in range(phase.repeat):
                loss, stats = phase.loss(G, D)
                loss = loss.mean()
                self.strategy.backward(phase.net, loss * phase.gain)
                norm = self.strategy.step(phase.net)
                self._accumulate(phase.name, loss.detach(), norm, stats)
        self.nimg += self.cfg.train.batch * self.cfg.train.n_critic
        self.step += 1
        t = self.cfg.train
        beta = ema_beta(t.batch, self.nimg, t.ema_kimg, t.ema_rampup)
        update_ema(self.G_ema, self.strategy.module("G"), beta)

    def _accumulate(self, phase: str, loss, norm, stats) -> None:
        # Sums stay on the device; they are read once per log interval, not every step.
        finite = torch.isfinite(norm)
        values = {f"{phase}/loss": torch.where(finite, loss, 0.0), f"{phase}/grad_norm": torch.where(finite, norm, 0.0),
                  f"{phase}/count": finite.float(), f"{phase}/skipped": (~finite).float()}
        values.update({f"{phase}/{k}": torch.where(finite, v, 0.0) for k, v in stats.items()})
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.float()

    def _read_metrics(self) -> dict[str, float]:
        sums = {k: self.strategy.all_reduce_mean(v).item() for k, v in self._sums.items()}
        self._sums = {}
        runs = sum(v for k, v in sums.items() if k.endswith(("/count", "/skipped")))
        skipped = sum(v for k, v in sums.items() if k.endswith("/skipped"))
        out = {"skipped_share": skipped / max(runs, 1e-12)}
        for k, v in sums.items():
            phase, stat = k.split("/", 1)
            if stat == "skipped":
                out[k] = v * self.strategy.world_size
            elif stat != "count":
                out[k] = v / max(sums[f"{phase}/count"], 1e-12)
        return out

    # ---- the run ------------------------------------------------------------------------

    @property
    def kimg(self) -> float:
        return self.nimg / 1000

    def _crossed(self, every_kimg: float, before: int) -> bool:
        every = every_kimg * 1000
        return math.floor(self.nimg / every) > math.floor(before / every)

    def train(self) -> dict[str, float]:
        cfg, total_nimg = self.cfg, int(self.cfg.train.kimg * 1000)
        bar = tqdm(total=total_nimg, initial=self.nimg, unit="img", unit_scale=True,
                   disable=self.strategy.rank != 0, dynamic_ncols=True, mininterval=1.0)
        window_t, window_nimg = time.perf_counter(), self.nimg
        while self.nimg < total_nimg:
            before = self.nimg
            self.train_step()
            done = self.nimg >= total_nimg
            if self.step % cfg.train.log_every == 0 or done:
                now = time.perf_counter()
                metrics = self._read_metrics()
                metrics["img_per_s"] = (self.nimg - window_nimg) / max(now - window_t, 1e-9)
                metrics["kimg"] = self.kimg
                metrics["lr_G"], metrics["lr_D"] = cfg.g_optim.lr * self.lr_scale, cfg.d_optim.lr * self.lr_scale
                metrics["augment_p"] = self.augment.p
                window_t, window_nimg = now, self.nimg
                if self.step >= self.tracker.start_step:  # a resumed run already logged up to there
                    self.tracker.log_metrics(metrics, self.step)
                bar.set_postfix({"img/s": f"{metrics['img_per_s']:.0f}"}, refresh=False)
                bar.update(min(self.nimg, total_nimg) - bar.n)
                if self.health and self._respond(self.health.check_losses(
                        self.step, metrics.get("D_main/loss", 0.0), metrics.get("G_main/loss", 0.0),
                        metrics["skipped_share"], {k: v for k, v in metrics.items() if k.endswith("grad_norm")})):
                    bar.reset(total_nimg)
                    bar.update(self.nimg)
                    window_nimg = self.nimg
                    continue
            if self._crossed(cfg.train.eval_kimg, before) or done:
                self.evaluate()
            if self._crossed(cfg.train.checkpoint_kimg, before) or done:
                self.save()
        bar.close()
        return self.last_eval

    def evaluate(self) -> dict[str, float]:
        if self.health:
            z = torch.randn(self.cfg.health.diversity_samples, self.cfg.model.z_dim,
                            generator=torch.Generator().manual_seed(self.cfg.seed + 777))
            with torch.no_grad():
                self._respond(self.health.check_diversity(self.step, self.G_ema(z.to(self.device))))
        self.last_eval = self.evaluator(self.G_ema, self.step, self.tracker)
        if self.last_eval:
            tqdm.write(f"kimg {self.kimg:.1f}: " + ", ".join(f"{k} {v:g}" for k, v in self.last_eval.items()))
        return self.last_eval

    def _respond(self, decision: Decision) -> bool:
        """Act on a health decision; True when the run was rolled back to a checkpoint."""
        if decision.ok:
            return False
        tqdm.write(f"gantry: health {decision.action}: {decision.problem}: {decision.reason}")
        self.tracker.log_metrics({f"health/{decision.problem}": 1.0}, self.step)
        self.tracker.set_tags({"health_last_event": f"{decision.action}: {decision.reason}"[:5000]})
        if decision.action == "warn":
            return False
        last_good = checkpoint.latest_checkpoint(self.run_dir / "checkpoints")
        if decision.action == "stop" or last_good is None:
            raise GantryError(f"training stopped by the health monitor: {decision.reason}"
                              + ("" if decision.action == "stop" else " (no checkpoint to roll back to)"))
        lr_scale = self.lr_scale * decision.lr_scale
        self.load(last_good)
        self.set_lr_scale(lr_scale)
        self._sums = {}
        tqdm.write(f"gantry: rolled back to {last_good.name}, learning rates x{lr_scale:g}")
        return True

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scale = scale
        base = {"G": self.cfg.g_optim.lr, "D": self.cfg.d_optim.lr}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = base[name] * scale

    # ---- checkpoints --------------------------------------------------------------------

    def save(self) -> Path | None:
        self.strategy.barrier()
        state = self._state()  # collective: gathers every rank's data position and RNG
        path = None
        score = quality_score(self.last_eval)
        improved = score is not None and (self.best_score is None or score > self.best_score)
        if improved:
            self.best_score = score
        if self.strategy.rank == 0:
            weights = {"G": self.strategy.module("G").state_dict(), "D": self.strategy.module("D").state_dict(),
                       "G_ema": self.G_ema.state_dict()}
            meta = {"step": self.step, "nimg": self.nimg, "kimg": self.kimg, "channels": self.channels,
                    "config": self.cfg.model_dump(mode="json"), "tracking_run_id": self.tracker.run_id,
                    "eval": self.last_eval, "best_score": self.best_score, "time": time.time()}
            path = checkpoint.save_checkpoint(self.run_dir / "checkpoints", self.step, weights,
                                              state, meta, keep=self.cfg.train.keep_checkpoints)
            self.tracker.log_artifact(str(path), "checkpoints/latest")
            if improved:
                self.tracker.log_artifact(str(path), "checkpoints/best")
        self.strategy.barrier()
        if self.on_checkpoint:
            self.on_checkpoint(path, {"step": self.step, "kimg": self.kimg, **self.last_eval})
        return path

    def _state(self) -> dict:
        np_state = np.random.get_state(legacy=False)
        return {
            "step": self.step, "nimg": self.nimg, "lr_scale": self.lr_scale,
            "augment": self.augment.state_dict(),
            "strategy": self.strategy.state_dict(),
            "data": self.strategy.all_gather_object(self.stream.state_dict()),  # by rank
            "rng": self.strategy.all_gather_object({
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "numpy_pos": int(np_state["state"]["pos"]),
            }),
        }

    def load(self, path: Path) -> None:
        weights, state, meta = checkpoint.load_checkpoint(path)
        self.strategy.module("G").load_state_dict(weights["G"])
        self.strategy.module("D").load_state_dict(weights["D"])
        self.G_ema.load_state_dict(weights["G_ema"])
        self.strategy.load_state_dict(state["strategy"])
        # This rank's entry; a run resumed with more workers gives the new ranks rank 0's.
        mine = self.strategy.rank if self.strategy.rank < len(state["data"]) else 0
        self.stream.load_state_dict(state["data"][mine])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.augment.load_state_dict(state["augment"])
        self.set_lr_scale(float(state["lr_scale"]))
        self.last_eval = meta.get("eval", {})
        self.best_score = meta.get("best_score")
        rng = state["rng"][mine]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), None))
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))

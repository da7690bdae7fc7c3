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

from models.ema import ema_beta, update_ema
from models.losses import d_loss, g_loss, gradient_penalty, r1_penalty
from pipeline import checkpoint
from pipeline.build import build_networks, build_optimizer
from pipeline.config import RunConfig
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
        strategy.setup({"G": G, "D": D},
                       {"G": build_optimizer(G.parameters(), cfg.g_optim),
                        "D": build_optimizer(D.parameters(), cfg.d_optim)},
                       self.precision)
        torch.manual_seed(cfg.seed * 1009 + strategy.rank)  # each rank draws its own latents
        self.phases = self._phases()
        self.step = 0
        self.nimg = 0
        self.last_eval: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._real: torch.Tensor | None = None

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
            real_logits, fake_logits = D(self._real), D(fake)
        loss = d_loss(self.cfg.loss.kind, real_logits, fake_logits)
        stats = {"D_real": real_logits.detach().float().mean(), "D_fake": fake_logits.detach().float().mean()}
        if self.cfg.loss.kind == "wgan-gp":
            gp = gradient_penalty(D, self._real, fake)
            loss = loss + self.cfg.loss.gp_weight * gp
            stats["gp"] = gp.detach().mean()
        return loss, stats

    def _d_r1(self, G, D):
        r1 = r1_penalty(D, self._real)
        return r1 * (self.cfg.loss.r1_gamma / 2), {"r1": r1.detach().mean()}

    def _g_main(self, G, D):
        with self.precision.autocast():
            fake_logits = D(G(self._latents(self.local_batch)))
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
        out = {}
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
                metrics["lr_G"], metrics["lr_D"] = cfg.g_optim.lr, cfg.d_optim.lr
                window_t, window_nimg = now, self.nimg
                self.tracker.log_metrics(metrics, self.step)
                bar.set_postfix({"img/s": f"{metrics['img_per_s']:.0f}"}, refresh=False)
                bar.update(min(self.nimg, total_nimg) - bar.n)
            if self._crossed(cfg.train.eval_kimg, before) or done:
                self.evaluate()
            if self._crossed(cfg.train.checkpoint_kimg, before) or done:
                self.save()
        bar.close()
        return self.last_eval

    def evaluate(self) -> dict[str, float]:
        self.last_eval = self.evaluator(self.G_ema, self.step, self.tracker)
        if self.last_eval:
            tqdm.write(f"kimg {self.kimg:.1f}: " + ", ".join(f"{k} {v:g}" for k, v in self.last_eval.items()))
        return self.last_eval

    # ---- checkpoints --------------------------------------------------------------------

    def save(self) -> Path | None:
        self.strategy.barrier()
        path = None
        if self.strategy.rank == 0:
            weights = {"G": self.strategy.module("G").state_dict(), "D": self.strategy.module("D").state_dict(),
                       "G_ema": self.G_ema.state_dict()}
            meta = {"step": self.step, "nimg": self.nimg, "kimg": self.kimg, "channels": self.channels,
                    "config": self.cfg.model_dump(mode="json"), "tracking_run_id": self.tracker.run_id,
                    "eval": self.last_eval, "time": time.time()}
            path = checkpoint.save_checkpoint(self.run_dir / "checkpoints", self.step, weights,
                                              self._state(), meta, keep=self.cfg.train.keep_checkpoints)
        self.strategy.barrier()
        return path

    def _state(self) -> dict:
        np_state = np.random.get_state(legacy=False)
        return {
            "step": self.step, "nimg": self.nimg,
            "strategy": self.strategy.state_dict(),
            "data": self.stream.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "numpy_pos": int(np_state["state"]["pos"]),
            },
        }

    def load(self, path: Path) -> None:
        weights, state, meta = checkpoint.load_checkpoint(path)
        self.strategy.module("G").load_state_dict(weights["G"])
        self.strategy.module("D").load_state_dict(weights["D"])
        self.G_ema.load_state_dict(weights["G_ema"])
        self.strategy.load_state_dict(state["strategy"])
        self.stream.load_state_dict(state["data"])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.last_eval = meta.get("eval", {})
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), None))
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))

"""The alternating GAN loop. One training step, top to bottom:

    for each phase (D_main x n_critic, D_r1 and D_r2 every r1_interval steps, G_main):
        make that network trainable, the other frozen
        draw what the phase needs (real batch + latents, latents, or the last batch)
        loss = phase.loss(G, D, batch)          # under autocast; reductions in fp32
        strategy.backward(net, loss * gain)     # lazy regularizers scale by their interval
        strategy.step(net)                      # skipped and counted if the gradient is non-finite
    update G_ema; count images

The trainer receives finished parts (pipeline/worker.py builds them) and only trains.
Everything distributed hides behind `strategy`; everything logged goes through `tracker`.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from models.ema import ema_beta, recalibrate_batchnorm, update_ema
from pipeline import checkpoint, console, storage
from pipeline.config import RunConfig
from pipeline.errors import HealthStopped
from pipeline.evaluation import headline, quality_score
from pipeline.health import OK, Decision, HealthMonitor, Probe
from pipeline.phases import Batch, Phase
from pipeline.precision import Precision
from pipeline.schedules import cosine
from pipeline.step_stats import StepStats
from pipeline.strategy import Strategy
from pipeline.tracking import Tracker

PROGRESS_EVERY_S = 2.0  # a progress line at most this often: each one crosses Ray's log relay


class Trainer:
    def __init__(self, cfg: RunConfig, strategy: Strategy, G_ema: torch.nn.Module, phases: list[Phase],
                 stream, precision: Precision, augment, tracker: Tracker, evaluator, health: HealthMonitor | None,
                 probe: Probe, run_dir: str, channels: int,
                 on_checkpoint: Callable[[str | None, dict], None] | None = None):
        """`cfg` gives the schedule (train.*) and base learning rates; `probe` holds G's input for
        the health monitor's diversity readings and the real data's diversity
        (pipeline/worker.health_probe); `on_checkpoint(path, info)`
        runs on every rank after each save (path on rank 0, None elsewhere): launchers use it to
        report progress, e.g. the Ray launcher's metrics to Ray Train."""
        self.cfg, self.strategy, self.G_ema, self.phases = cfg, strategy, G_ema, phases
        self.stream, self.precision, self.augment, self.tracker = stream, precision, augment, tracker
        self.evaluator, self.health, self.run_dir, self.channels = evaluator, health, run_dir, channels
        self.probe = probe._replace(inputs=tuple(t.to(strategy.device) for t in probe.inputs))
        self.on_checkpoint = on_checkpoint
        self.device = strategy.device
        self.local_batch = cfg.rank_batch(strategy.world_size)
        self.lr_scale = 1.0  # lowered by health rollbacks
        self.scheduled = any(o.lr_end is not None or o.beta2_end is not None for o in (cfg.g_optim, cfg.d_optim))
        self.step = 0
        self.nimg = 0
        self.last_eval: dict[str, float] = {}
        self.best_score: float | None = None
        self.flagged: set[str] = set()  # the health problems seen, for launchers' reports
        self.calibrated_step = -1  # the step G_ema's batch-norm statistics were last re-estimated at
        self.stats = StepStats()

    # ---- one step -----------------------------------------------------------------------

    def _latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n latents, and for a conditional run the classes G draws them for (uniform)."""
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device)
        m = self.cfg.model
        return z, torch.randint(m.classes, (n,), device=self.device) if m.conditional else None

    def _draw(self, what: str, last: Batch | None) -> Batch:
        if what == "same":
            return last
        if what == "latents":
            # as many as the reals D just saw: rpgan pairs them, and an epoch's last batch is short
            z, c_z = self._latents(len(last.real) if last and last.real is not None else self.local_batch)
            return Batch(last.real if last else None, z, c=last.c if last else None, c_z=c_z, kimg=self.kimg)
        x, cond = next(self.stream)  # cond: the labels, or pix2pix's inputs A
        z, c_z = self._latents(len(x))  # an epoch's last batch may be short
        return Batch(self._to_device(x), z, c=self._to_device(cond) if self.cfg.conditioned else None, c_z=c_z,
                     kimg=self.kimg)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_step(self) -> None:
        batch = None
        G, D = self.strategy.module("G"), self.strategy.module("D")
        if self.scheduled:
            self._follow_schedules()
        for phase in self.phases:
            if self.step % phase.interval:
                continue
            G.requires_grad_(phase.net == "G")
            D.requires_grad_(phase.net == "D")
            for _ in range(phase.repeat):
                batch = self._draw(phase.draws, batch)
                loss, stats = phase.loss(G, D, batch)
                loss = loss.mean()
                self.strategy.backward(phase.net, loss * phase.gain)
                norm = self.strategy.step(phase.net)
                self.stats.add(phase.name, loss.detach(), norm, stats)
        self.nimg += self.cfg.train.batch * self.cfg.train.n_critic
        self.step += 1
        t = self.cfg.train
        update_ema(self.G_ema, G, ema_beta(t.batch, self.nimg, t.ema_kimg, t.ema_rampup))

    # ---- the run ------------------------------------------------------------------------

    @property
    def kimg(self) -> float:
        return self.nimg / 1000

    def _crossed(self, every_kimg: float, before: int) -> bool:
        every = every_kimg * 1000
        return math.floor(self.nimg / every) > math.floor(before / every)

    def train(self) -> dict[str, float]:
        t, total_nimg = self.cfg.train, int(self.cfg.train.kimg * 1000)
        window_t, window_nimg = time.perf_counter(), self.nimg
        shown_t = -PROGRESS_EVERY_S
        while self.nimg < total_nimg:
            before = self.nimg
            self.train_step()
            done = self.nimg >= total_nimg
            if self.step % t.log_every == 0 or done:
                now = time.perf_counter()
                metrics = self.stats.read(self.strategy.all_reduce_mean)
                metrics["img_per_s"] = (self.nimg - window_nimg) / max(now - window_t, 1e-9)
                metrics["kimg"] = self.kimg
                metrics["lr_G"] = self._optim_now(self.cfg.g_optim)["lr"]
                metrics["lr_D"] = self._optim_now(self.cfg.d_optim)["lr"]
                metrics["augment_p"] = self.augment.p
                window_t, window_nimg = now, self.nimg
                if self.step >= self.tracker.start_step:  # a resumed run already logged up to there
                    self.tracker.log_metrics(metrics, self.step)
                if self.strategy.rank == 0 and (done or now - shown_t >= PROGRESS_EVERY_S):
                    shown_t = now
                    self._show_progress(metrics["img_per_s"], total_nimg)
                # A G loss with non-adversarial terms (pix2pix's L1) reports its adversarial one as
                # `adv`: divergence shows there, while the L1 term alone starts far above max_loss.
                g_adv = metrics.get("G_main/adv", metrics.get("G_main/loss", 0.0))
                if self.health and self._respond(self.health.check_losses(
                        self.step, metrics.get("D_main/loss", 0.0), g_adv,
                        metrics["skipped_share"], {k: v for k, v in metrics.items() if k.endswith("grad_norm")})):
                    window_nimg = self.nimg
                    continue
            evaluating = self._crossed(t.eval_kimg, before) or done
            saving = self._crossed(t.checkpoint_kimg, before) or done
            if evaluating:
                self.evaluate()
            if saving:
                self.save()
            if evaluating or saving:  # img/s is the training rate: the next window starts after them
                window_t, window_nimg = time.perf_counter(), self.nimg
        return self.last_eval

    def _show_progress(self, img_per_s: float, total_nimg: int) -> None:
        total = total_nimg / 1000
        line = f"kimg {self.kimg:.2f}/{total:g} ({100 * self.nimg / total_nimg:.0f}%), {img_per_s:.0f} img/s"
        if img_per_s > 0 and self.nimg < total_nimg:
            line += f", ETA {console.duration((total_nimg - self.nimg) / img_per_s)}"
        if headline(self.last_eval):
            line += ", {} {:.4g}".format(*headline(self.last_eval))
        console.progress(line)

    def calibrate_ema(self, batch: int = 256) -> None:
        """G_ema's batch-norm statistics from `train.ema_bn_latents` latents of a fixed seed
        (models/ema.recalibrate_batchnorm); the next step's EMA update copies G's back, so this
        runs before each evaluation and save. The latents come from their own generator: the
        training RNG stream, and so an exact resume, stays untouched."""
        n, m = self.cfg.train.ema_bn_latents, self.cfg.model
        if not n or self.calibrated_step == self.step:
            return
        gen = torch.Generator().manual_seed(self.cfg.seed + 4242)

        def inputs():
            for size in [batch] * (n // batch) + ([n % batch] if n % batch > 1 else []):
                z = torch.randn(size, m.z_dim, generator=gen).to(self.device)
                c = torch.randint(m.classes, (size,), generator=gen).to(self.device) if m.conditional else None
                yield (z, c) if m.conditional else (z,)

        recalibrate_batchnorm(self.G_ema, inputs())
        self.calibrated_step = self.step

    def evaluate(self) -> dict[str, float]:
        self.calibrate_ema()
        decision = OK
        if self.health:
            with torch.no_grad():
                out = self.G_ema(*self.probe.inputs)
            decision = self.health.check_diversity(self.step, out, self.probe.real_diversity, self.probe.labels)
            readings = {"diversity": self.health.last_diversity, "real_diversity": self.probe.real_diversity}
            self.tracker.log_metrics({k: v for k, v in readings.items() if v is not None}, self.step)
        # rank 0's scores on every rank: the health decision below must be the same everywhere
        self.last_eval = self.strategy.all_gather_object(self.evaluator(self.G_ema, self.step, self.tracker))[0]
        if self.last_eval:
            self._say(f"eval at kimg {self.kimg:.2f}: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_eval.items()))
        if self.health and decision.ok:
            decision = self._check_scores(self.last_eval)
        self._respond(decision)  # after the scores: a rollback replaces them with the checkpoint's
        return self.last_eval

    def _check_scores(self, scores: dict[str, float]) -> Decision:
        """The health rules that read an evaluation: diversity in its feature space against the
        real data's, and the classes G's images fill."""
        space = self.cfg.eval.features
        if f"diversity_{space}" in scores:
            decision = self.health.check_real(self.step, scores[f"diversity_{space}"],
                                              scores[f"real_diversity_{space}"], f"{space} features")
            if not decision.ok:
                return decision
        if "classes_covered" in scores:
            return self.health.check_coverage(self.step, scores["classes_covered"], scores["classes_total"])
        return OK

    def _respond(self, decision: Decision) -> bool:
        """Act on a health decision; True when the run was rolled back to a checkpoint."""
        if decision.ok:
            return False
        self._say(f"health {decision.action}: {decision.problem}: {decision.reason}")
        self.flagged.add(decision.problem)
        self.tracker.log_metrics({f"health/{decision.problem}": 1.0}, self.step)
        self.tracker.set_tags({"health_last_event": f"{decision.action}: {decision.reason}"[:5000]})
        if decision.action == "warn":
            return False
        last_good = checkpoint.latest_checkpoint(storage.join(self.run_dir, "checkpoints"))
        if decision.action == "stop" or last_good is None:
            raise HealthStopped(f"training stopped by the health monitor: {decision.reason}"
                              + ("" if decision.action == "stop" else " (no checkpoint to roll back to)"))
        lr_scale = self.lr_scale * decision.lr_scale
        self.load(last_good)
        self.set_lr_scale(lr_scale)
        self.stats.clear()
        self._say(f"rolled back to {storage.basename(last_good)}, learning rates x{lr_scale:g}")
        return True

    def _say(self, message: str) -> None:
        """A console line, once per run: every rank takes the same decisions."""
        if self.strategy.rank == 0:
            console.say(message)

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scale = scale
        self._follow_schedules()

    def _optim_now(self, o) -> dict:
        """An optimizer's lr and betas at this kimg: the cosine ramps of lr_end and beta2_end
        (pipeline/schedules.py), a function of kimg so a resumed run takes the same values as
        a straight one; the lr times the rollbacks' scale."""
        lr = o.lr if o.lr_end is None else cosine(o.lr, o.lr_end, self.kimg, self.cfg.ramp_kimg)
        beta2 = o.beta2 if o.beta2_end is None else cosine(o.beta2, o.beta2_end, self.kimg, self.cfg.ramp_kimg)
        return {"lr": lr * self.lr_scale, "betas": (o.beta1, beta2)}

    def _follow_schedules(self) -> None:
        for name, o in (("G", self.cfg.g_optim), ("D", self.cfg.d_optim)):
            self.strategy.set_optim(name, **self._optim_now(o))

    # ---- checkpoints --------------------------------------------------------------------

    def save(self) -> str | None:
        self.calibrate_ema()
        self.strategy.barrier()
        state = {  # collective: every rank's data position and RNG
            "step": self.step, "nimg": self.nimg, "lr_scale": self.lr_scale,
            "augment": self.augment.state_dict(), "strategy": self.strategy.state_dict(),
            "data": self.strategy.all_gather_object(self.stream.state_dict()),  # by rank
            "rng": self.strategy.all_gather_object(checkpoint.capture_rng()),
        }
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
            if self.cfg.model.conditional:
                meta["class_names"] = self.stream.class_names  # by label, for samples a person can read
            path = checkpoint.save_checkpoint(storage.join(self.run_dir, "checkpoints"), self.step, weights,
                                              state, meta, keep=self.cfg.train.keep_checkpoints)
            console.say(f"saved {storage.basename(path)} at kimg {self.kimg:.2f}")
            self.tracker.log_artifact(path, "checkpoints/latest")
            if improved:
                self.tracker.log_artifact(path, "checkpoints/best")
        self.strategy.barrier()
        if self.on_checkpoint:
            self.on_checkpoint(path, {"step": self.step, "kimg": self.kimg, **self.last_eval,
                                      "health": ",".join(sorted(self.flagged))})
        return path

    def load(self, path: str) -> None:
        weights, state, meta = checkpoint.load_checkpoint(path)
        for name, net in (("G", self.strategy.module("G")), ("D", self.strategy.module("D")), ("G_ema", self.G_ema)):
            checkpoint.load_into(net, weights[name], path, name)
        self.strategy.load_state_dict(state["strategy"])
        # This rank's entry; a run resumed with more workers gives the new ranks rank 0's.
        mine = self.strategy.rank if self.strategy.rank < len(state["data"]) else 0
        self.stream.load_state_dict(state["data"][mine])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.augment.load_state_dict(state["augment"])
        self.set_lr_scale(float(state["lr_scale"]))
        self.last_eval = meta.get("eval", {})
        self.best_score = meta.get("best_score")
        checkpoint.restore_rng(state["rng"][mine])

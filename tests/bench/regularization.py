"""What plain (every-step) R1 + R2 cost in D's main step against phases of their own.

At `loss.r1_interval: 1` in an fp32 run, pipeline/phases.py computes R1 and R2 from D main's own
forward (one D forward on reals and fakes, one backward, one optimizer step); the alternative is
a phase each (D main, then R1 and R2 with their own D forward, backward and step, and for R2 its
own G forward). This times D's part of a training step both ways, on synthetic data, for the
toy MLP (configs/toy-ring.yaml) and DCGAN at 32x32 (configs/mnist-dcgan.yaml), rpgan with
R1 = R2 = 0.1. Each figure is the median of `--windows` windows of `--window` steps after one
warm-up window. Prints one JSON object: ms per step each way and their ratio.
Usage: python tests/bench/regularization.py [--windows 5] [--window 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from models.augment import Augment
from pipeline.config import load_config
from pipeline.phases import Batch, build_phases
from pipeline.precision import choose_precision
from pipeline.worker import build_networks, build_optimizer

REPO = Path(__file__).resolve().parents[2]
SETUPS = {"toy-mlp": ("toy-ring.yaml", [], 2), "dcgan-32": ("mnist-dcgan.yaml", ["data.path=unused"], 1)}


def d_step_ms(config: str, extra: list[str], channels: int, interval: int, windows: int, window: int) -> float:
    """ms per step of every D phase, each phase run every step (interval 2 builds them apart)."""
    cfg = load_config(REPO / "configs" / config, extra + ["loss.kind=rpgan", "loss.r1_gamma=0.1",
                                                          "loss.r2_gamma=0.1", f"loss.r1_interval={interval}",
                                                          "train.precision=fp32"])
    precision = choose_precision(cfg.train, torch.device("cpu"), image_model=not cfg.is_toy)
    phases = [p for p in build_phases(cfg, Augment(), precision, reduce=lambda t: t) if p.net == "D"]
    torch.manual_seed(0)
    G, D = build_networks(cfg, channels)
    G.requires_grad_(False)
    opt = build_optimizer(D.parameters(), cfg.d_optim)
    b = cfg.train.batch
    shape = (b, 2) if cfg.is_toy else (b, channels, cfg.model.resolution, cfg.model.resolution)
    batch = Batch(torch.rand(shape) * 2 - 1, torch.randn(b, cfg.model.z_dim))
    times = []
    for w in range(windows + 1):
        t0 = time.perf_counter()
        for _ in range(window):
            for phase in phases:
                loss, _ = phase.loss(G, D, batch)
                loss.mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        if w:  # the first window warms up
            times.append((time.perf_counter() - t0) / window * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args()
    out: dict = {"threads": torch.get_num_threads()}
    for name, (config, extra, channels) in SETUPS.items():
        plain = d_step_ms(config, extra, channels, 1, args.windows, args.window)
        apart = d_step_ms(config, extra, channels, 2, args.windows, args.window)
        out[name] = {"in_d_main_ms": round(plain, 3), "own_phases_ms": round(apart, 3),
                     "own_over_in_main": round(apart / plain, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

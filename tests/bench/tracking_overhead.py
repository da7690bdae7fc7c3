"""Step-time overhead of MLflowTracker on a small synthetic training loop.

A small conv net trained with Adam on random data; every 10th step logs two metrics. The same
loop runs with the no-op Tracker ("off") and with MLflowTracker on a local SQLite store ("on"),
in interleaved windows so that machine noise hits both alike. Prints one JSON object: the median
per-step time of each and the overhead in %, plus the CPU time the tracker's own threads used
(a load-independent measure: on a busy shared machine the step times are noisy). Target: < 2 %.

    .venv/bin/python tests/bench/tracking_overhead.py [--windows 8] [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.config import TrackingConfig  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from pipeline.tracking.mlflow_tracker import MLflowTracker  # noqa: E402

LOG_EVERY = 10


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 1),
    )


def run_window(model, opt, x, y, tracker: Tracker, first_step: int, steps: int) -> float:
    """Median seconds per step over `steps` steps logging to `tracker`."""
    times = []
    for step in range(first_step, first_step + steps):
        t0 = time.perf_counter()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % LOG_EVERY == 0:
            tracker.log_metrics({"loss": loss.item(), "kimg": step * x.shape[0] / 1000}, step)
        times.append(time.perf_counter() - t0)
    # Mean, not median, within a window: logging steps are 1 in 10 and must count.
    return sum(times) / len(times)


def thread_cpu_seconds(exclude: int) -> float:
    """CPU seconds used so far by this process's Python threads other than `exclude` (the
    tracker's worker and MLflow's system-metrics sampler; torch's pool threads are not Python
    threads and are left out)."""
    ids = {t.native_id for t in threading.enumerate()} - {exclude}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=20, help="windows per mode")
    ap.add_argument("--steps", type=int, default=20, help="steps per window")
    args = ap.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # One intra-op thread: on a shared 2-core machine a 2-thread pool stalls whenever another
    # process holds a core, which swamps the effect measured here.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 3, 16, 16), torch.rand(32, 1)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        on = MLflowTracker(TrackingConfig(uri=f"sqlite:///{tmp}/mlruns.db", experiment="bench"), "overhead")
        off = Tracker()
        run_window(model, opt, x, y, off, 0, args.steps)  # warm-up: allocator, threads
        windows = {"off": [], "on": []}
        step = args.steps
        for _ in range(args.windows):
            for mode, tracker in (("off", off), ("on", on)):
                windows[mode].append(run_window(model, opt, x, y, tracker, step, args.steps))
                step += args.steps
        train_s = sum(windows["on"]) * args.steps
        tracker_cpu_s = thread_cpu_seconds(exclude=threading.main_thread().native_id)
        on.close()
        logged = len(on.client.get_metric_history(on.run_id, "loss"))
    off_ms = statistics.median(windows["off"]) * 1e3
    on_ms = statistics.median(windows["on"]) * 1e3
    print(json.dumps({
        "bench": "tracking_overhead",
        "steps_per_window": args.steps, "windows_per_mode": args.windows, "log_every": LOG_EVERY,
        "step_ms_off": round(off_ms, 3), "step_ms_on": round(on_ms, 3),
        "overhead_pct": round((on_ms / off_ms - 1) * 100, 2),
        "tracker_threads_cpu_pct_of_on_time": round(100 * tracker_cpu_s / train_s, 2),
        "points_logged": logged, "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()

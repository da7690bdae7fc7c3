"""What the pipeline costs around the math, and what bf16 + channels_last buys, on DCGAN-64.

One run of this script measures, on MNIST shards at 64x64 (built in a temp dir):
  bare      a bare loop built from the same models/ networks, losses and optimizer on synthetic
            tensors: D step, G step, nothing else (no data, EMA, metrics or tracking);
  pipeline  `gantry train configs/mnist-dcgan.yaml` at 64x64 as a user runs it (shards -> stream ->
            trainer -> MLflow tracking to a SQLite store, 1 worker), timed by the img/s the trainer
            logs for each window of `--window` steps, read back from MLflow;
each in fp32 NCHW and in bf16 + channels_last (the pipeline with its defaults, which choose the
precision from the CPU: the chosen one is read from the run's tags), then the same default run
under Ray x1 and the local launcher side by side, in windows where they take turns every
`--paired-slice-s` (`ray_over_local_1_worker`, the median of the windows' ratios: what the Ray
launcher costs per step; see `paired`), and Ray x2 (ddp, same per-worker batch; `--no-scaling`
skips it). Every figure is the median of `--windows` windows after 2 warm-up ones. Prints one
JSON object with the ratios.
With --compile, also the bf16 bare loop with `torch.compile`d G and D (R1's double backward
does not compile, so the trainer does not offer it; this measures what it would buy).
--no-bf16 drops the bf16 bare loop: on a CPU without native bf16 (no AVX512-BF16/AMX) it times
emulation, many times slower than fp32, and `auto` picks fp32 for the pipeline anyway.
Usage: python tests/bench/train_throughput.py [--windows 5] [--window 10] [--width 64] [--no-ray] [--no-scaling]
       [--paired-window-s 9] [--paired-slice-s 3] [--no-bf16] [--compile]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.losses import d_loss, g_loss
from pipeline.allocator import keep_freed_memory
from pipeline.worker import build_networks, build_optimizer
from pipeline.config import load_config
from pipeline.precision import choose_precision
from pipeline.shards import build_shards

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "mnist-dcgan.yaml"
WARMUP = 2


def overrides(shards: Path, width: int, batch: int) -> list[str]:
    # DCGAN-64 at batch 64; no R1 (the bare loop has none) and evaluation only at the end.
    return [f"data.path={shards}", "model.resolution=64", f"model.g_width={width}", f"model.d_width={width}",
            f"train.batch={batch}", "loss.r1_gamma=0", "train.eval_kimg=100000", "train.checkpoint_kimg=100000",
            "eval.metrics=[]"]


def bare(shards: Path, width: int, batch: int, precision: str, windows: int, window: int,
         compiled: bool = False) -> list[float]:
    channels_last = "on" if precision == "bf16" else "off"
    cfg = load_config(CONFIG, overrides(shards, width, batch) + [f"train.precision={precision}",
                                                                  f"train.channels_last={channels_last}"])
    prec = choose_precision(cfg.train, torch.device("cpu"), image_model=True)
    keep_freed_memory()  # as train_worker does: the math, not the allocator, is the reference
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    G, D = (net.to(memory_format=fmt) for net in build_networks(cfg, channels=1))
    if compiled:  # compilation happens in the warm-up windows
        G, D = torch.compile(G), torch.compile(D)
    opt = {"G": build_optimizer(G.parameters(), cfg.g_optim), "D": build_optimizer(D.parameters(), cfg.d_optim)}
    real = torch.rand(batch, 1, 64, 64).mul(2).sub(1).contiguous(memory_format=fmt)
    kind = cfg.loss.kind
    rates = []
    for _ in range(WARMUP + windows):
        start = time.perf_counter()
        for _ in range(window):
            G.requires_grad_(False), D.requires_grad_(True)
            with prec.autocast():
                fake = G(torch.randn(batch, cfg.model.z_dim))
                loss = d_loss(kind, D(real), D(fake)).mean()
            opt["D"].zero_grad(set_to_none=True)
            loss.backward()
            opt["D"].step()
            G.requires_grad_(True), D.requires_grad_(False)
            with prec.autocast():
                loss = g_loss(kind, D(G(torch.randn(batch, cfg.model.z_dim)))).mean()
            opt["G"].zero_grad(set_to_none=True)
            loss.backward()
            opt["G"].step()
        rates.append(window * batch / (time.perf_counter() - start))
    return rates[WARMUP:]


def gantry_train(args: list[str], uri: str, experiment: str, tag: str):
    """`gantry train ARGS`, tracked as run `tag` of `experiment` at `uri`: (MlflowClient, run)."""
    from mlflow import MlflowClient

    cmd = [sys.executable, "-m", "launch.cli", "train", *args, f"tracking.uri={uri}",
           f"tracking.experiment={experiment}", f"tracking.run_name={tag}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    if r.returncode:
        sys.exit(f"{tag} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                      f"attributes.run_name = '{tag}'")[0]


def pipeline(shards: Path, tmp: Path, tag: str, width: int, batch: int, windows: int, window: int,
             extra: list[str], cli: list[str]) -> tuple[list[float], dict]:
    """Rates of windows 3.. of a `gantry train` run, and the run's tags."""
    kimg = (WARMUP + windows) * window * batch / 1000
    client, run = gantry_train([str(CONFIG), *overrides(shards, width, batch), f"name={tag}",
                                f"train.out_dir={tmp / 'runs'}", f"train.kimg={kimg}", f"train.log_every={window}",
                                *extra, *cli], f"sqlite:///{tmp / 'mlflow.db'}", "throughput", tag)
    history = sorted(client.get_metric_history(run.info.run_id, "img_per_s"), key=lambda m: m.step)
    # The last window may be short (the run stops at kimg); windows 1-2 are warm-up.
    return [m.value for m in history[WARMUP:WARMUP + windows]], run.data.tags


def _tree(proc: subprocess.Popen) -> list:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    return []


def _signal(procs: list, sig: int) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def paired(shards: Path, tmp: Path, width: int, batch: int, windows: int, window_s: float,
           slice_s: float) -> dict[str, list[float]]:
    """img/s of the local and the Ray x1 launcher in `windows` windows, each launcher training
    `window_s` seconds of each window in alternating slices of `slice_s`.

    This VM's speed shifts by ~15 % for tens of seconds at a time (the same bare loop reads
    ~126 or ~145 img/s), so two runs one after the other compare the machine's moods, not the
    launchers. Here both runs are alive together, and every slice one of them (its whole process
    tree: for Ray, the driver and the cluster it started) is SIGSTOPped while the other trains,
    in the order local, Ray, Ray, local, ... so that a drift within a window falls on both. A
    slice counts only steps that started and ended inside it, timed by the trainer's per-step
    log. Stopping the Ray cluster's daemons, not only its worker, is the harder test for Ray: they
    wake to a backlog of timers at each slice."""
    from mlflow import MlflowClient

    kimg = 1000  # stopped by SIGTERM once the windows are taken
    procs, uris = {}, {}
    for tag, cli in (("ray", ["--launcher", "ray"]), ("local", [])):
        uris[tag] = f"sqlite:///{tmp / f'paired-{tag}.db'}"
        cmd = [sys.executable, "-m", "launch.cli", "train", str(CONFIG), *overrides(shards, width, batch),
               f"name=paired-{tag}", f"train.out_dir={tmp / 'runs'}", f"train.kimg={kimg}", "train.log_every=1",
               f"tracking.uri={uris[tag]}", "tracking.experiment=paired", f"tracking.run_name={tag}", *cli]
        procs[tag] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "MLFLOW_TRACKING_URI": uris[tag]})
        if tag == "ray":  # Ray starts first and alone: start-up is not what this times
            _wait_for_steps(uris[tag], tag, WARMUP * 10, procs[tag])
            _signal(_tree(procs[tag]), signal.SIGSTOP)
    _wait_for_steps(uris["local"], "local", WARMUP * 10, procs["local"])
    per_window = max(1, round(window_s / slice_s))
    slices: dict[str, list[tuple[int, float, float]]] = {"local": [], "ray": []}  # (window, start, end)
    running = "local"
    try:
        for k in range(windows):
            for j in range(per_window):
                for on in ("local", "ray") if j % 2 == 0 else ("ray", "local"):
                    if on != running:
                        _signal(_tree(procs[running]), signal.SIGSTOP)
                        _signal(_tree(procs[on]), signal.SIGCONT)
                        running = on
                    start = time.time()
                    time.sleep(slice_s)
                    slices[on].append((k, start, time.time()))
    finally:
        for proc in procs.values():
            _signal(_tree(proc), signal.SIGCONT)
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=120)
    rates = {}
    for tag, spans in slices.items():
        client = MlflowClient(uris[tag])
        run = client.search_runs([client.get_experiment_by_name("paired").experiment_id])[0]
        steps = [(m.timestamp / 1000, batch / m.value) for m in client.get_metric_history(run.info.run_id, "img_per_s")]
        rates[tag] = []
        for k in range(windows):
            inside = [dt for w, a, b in spans if w == k for t, dt in steps if a <= t - dt and t <= b]
            if not inside:
                sys.exit(f"{tag}: no whole step inside the slices of window {k + 1}")
            rates[tag].append(len(inside) * batch / sum(inside))
    return rates


def _wait_for_steps(uri: str, tag: str, n: int, proc: subprocess.Popen) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    while proc.poll() is None:
        exp = client.get_experiment_by_name("paired")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "img_per_s")) >= n:
            return
        time.sleep(1)
    sys.exit(f"{tag} exited ({proc.returncode}) before training {n} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window", type=int, default=10, help="steps per timed window")
    ap.add_argument("--width", type=int, default=64, help="DCGAN channel width (64: the DCGAN paper's)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray x1 / x2 comparison")
    ap.add_argument("--no-scaling", action="store_true", help="skip Ray x2")
    ap.add_argument("--paired-window-s", type=float, default=9.0,
                    help="seconds each launcher trains in a window of the local-vs-Ray comparison (see `paired`)")
    ap.add_argument("--paired-slice-s", type=float, default=3.0, help="seconds between switches in that comparison")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 bare loop (for CPUs without native bf16)")
    ap.add_argument("--compile", action="store_true", help="also the bf16 bare loop with torch.compile'd G and D")
    args = ap.parse_args()
    w, b, n, k = args.width, args.batch, args.windows, args.window
    med = statistics.median
    out: dict = {"model": f"DCGAN-64 width {w}, batch {b}, MNIST 64x64", "windows": n, "window_steps": k,
                 "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "mnist-64"
        build_shards("mnist", shards, 64, shard_size=1000, limit=8000)
        runs = {"bare_fp32": bare(shards, w, b, "fp32", n, k)}
        if not args.no_bf16:
            runs["bare_bf16"] = bare(shards, w, b, "bf16", n, k)
        if args.compile:
            runs["bare_bf16_compiled"] = bare(shards, w, b, "bf16", n, k, compiled=True)
        runs["pipeline_fp32"], _ = pipeline(shards, tmp, "fp32", w, b, n, k,
                                            ["train.precision=fp32", "train.channels_last=off"], [])
        runs["pipeline_default"], tags = pipeline(shards, tmp, "default", w, b, n, k, [], [])
        out["default_precision"] = {"precision": tags.get("precision"), "channels_last": tags.get("channels_last")}
        if not args.no_ray:
            both = paired(shards, tmp, w, b, n, args.paired_window_s, args.paired_slice_s)
            runs["ray_1_worker"], runs["local_beside_ray"] = both["ray"], both["local"]
            if not args.no_scaling:
                runs["ray_2_workers"], _ = pipeline(shards, tmp, "ray2", w, 2 * b, n, k, [],
                                                    ["--workers", "2", "--strategy", "ddp"])
    out["img_per_s"] = {name: round(med(r), 1) for name, r in runs.items()}
    out["windows_img_per_s"] = {name: [round(x, 1) for x in r] for name, r in runs.items()}
    ips = out["img_per_s"]
    out["ratios"] = {
        "pipeline_over_bare_fp32": round(ips["pipeline_fp32"] / ips["bare_fp32"], 3),
        "default_over_fp32_pipeline": round(ips["pipeline_default"] / ips["pipeline_fp32"], 3),
    }
    if not args.no_bf16:
        out["ratios"]["pipeline_over_bare_bf16"] = round(ips["pipeline_default"] / ips["bare_bf16"], 3)
        out["ratios"]["bf16_over_fp32_bare"] = round(ips["bare_bf16"] / ips["bare_fp32"], 3)
    if args.compile:
        out["ratios"]["compiled_over_eager_bf16_bare"] = round(ips["bare_bf16_compiled"] / ips["bare_bf16"], 3)
    if not args.no_ray:
        # windows are paired in time: the median of their ratios
        out["ratios"]["ray_over_local_1_worker"] = round(med(r / l for r, l in zip(runs["ray_1_worker"],
                                                                                 runs["local_beside_ray"])), 3)
    if not args.no_ray and not args.no_scaling:
        # not paired: Ray x2 runs after the pair, so this ratio carries the VM's drift between them
        out["ratios"]["ray_2_over_1_workers"] = round(ips["ray_2_workers"] / ips["ray_1_worker"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

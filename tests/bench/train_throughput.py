"""What the pipeline costs around the math, what bf16 + channels_last buys, and what the Ray
launcher costs, on DCGAN-64.

One run of this script measures, on MNIST shards at 64x64 (built in a temp dir):
  bare      a bare loop built from the same models/ networks, losses and optimizer on synthetic
            tensors: D step, G step, nothing else (no data, EMA, metrics or tracking);
  pipeline  `gantry train configs/mnist-dcgan.yaml` at 64x64 as a user runs it (shards -> stream ->
            trainer -> MLflow tracking to a SQLite store, 1 worker), timed by its per-step log;
as three pairs, each pair's two runs alive together and taking turns every `--paired-slice-s`
(see `paired`): bare vs pipeline in fp32 NCHW, bare in bf16 + channels_last vs the pipeline
with its defaults (which choose the precision from the CPU: the chosen one is read from the
run's tags), and the default pipeline under Ray x1 vs the local launcher (what the Ray launcher
costs per step). Each figure is the median of `--windows` windows, after 20 warm-up steps, of
`--paired-window-s` seconds of training per run; a pair's ratio is the median of its windows'
ratios. Then Ray x2 (ddp, same per-worker batch; `--no-scaling` skips it), run alone in
windows of `--window` steps. Prints one JSON object with the ratios.
With --compile, also the bf16 bare loop with `torch.compile`d G and D, alone (R1's double
backward does not compile, so the trainer does not offer it; this measures what it would buy).
--no-bf16 drops the bf16 pair: on a CPU without native bf16 (no AVX512-BF16/AMX) the bare loop
would time emulation, many times slower than fp32, and `auto` picks fp32 for the pipeline anyway.
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


def bare_loop(shards: Path, width: int, batch: int, precision: str, compiled: bool = False):
    """Yields the seconds each step takes of a bare loop (D step, G step, nothing else) on
    synthetic tensors, forever."""
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
    while True:
        start = time.perf_counter()
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
        yield time.perf_counter() - start


def bare(shards: Path, width: int, batch: int, precision: str, windows: int, window: int,
         compiled: bool = False) -> list[float]:
    """img/s of the bare loop in this process, windows of `window` steps after the warm-up."""
    steps = bare_loop(shards, width, batch, precision, compiled)
    return [window * batch / sum(next(steps) for _ in range(window)) for _ in range(WARMUP + windows)][WARMUP:]


def bare_to_file(path: str, shards: str, width: int, batch: int, precision: str) -> None:
    """The bare loop as a process `paired` can stop and resume: "end-time seconds" per step."""
    with open(path, "w") as f:
        for dt in bare_loop(Path(shards), width, batch, precision):
            f.write(f"{time.time()} {dt}\n")
            f.flush()


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


def train_contender(shards: Path, tmp: Path, tag: str, width: int, batch: int, extra: list[str], cli: list[str]):
    """`gantry train` DCGAN-64, logging every step, until stopped: (process, its MLflow uri)."""
    uri = f"sqlite:///{tmp / f'paired-{tag}.db'}"
    cmd = [sys.executable, "-m", "launch.cli", "train", str(CONFIG), *overrides(shards, width, batch),
           f"name=paired-{tag}", f"train.out_dir={tmp / 'runs'}", "train.kimg=1000", "train.log_every=1",
           f"tracking.uri={uri}", "tracking.experiment=paired", f"tracking.run_name={tag}", *extra, *cli]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}), uri


def bare_contender(shards: Path, tmp: Path, tag: str, width: int, batch: int, precision: str):
    """The bare loop in its own process, until stopped: (process, the file of its steps)."""
    path = tmp / f"paired-{tag}.steps"
    code = f"from train_throughput import bare_to_file; bare_to_file({str(path)!r}, {str(shards)!r}, {width}, " \
           f"{batch}, {precision!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "bench")])}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env), str(path)


def _steps(source: str, batch: int) -> list[tuple[float, float]]:
    """(end time, seconds) of each step a contender took so far, from its MLflow store or file."""
    if not source.startswith("sqlite:"):
        with contextlib.suppress(FileNotFoundError):
            return [tuple(map(float, ln.split())) for ln in Path(source).read_text().split("\n")[:-1]]
        return []
    run = _paired_run(source)
    if run is None:
        return []
    from mlflow import MlflowClient

    history = MlflowClient(source).get_metric_history(run.info.run_id, "img_per_s")
    return [(m.timestamp / 1000, batch / m.value) for m in history]


def _paired_run(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("paired")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return runs[0] if runs else None


def paired(contenders: dict, batch: int, windows: int, window_s: float, slice_s: float) -> dict[str, list[float]]:
    """img/s of two contenders (name: a function that starts one, as `train_contender` or
    `bare_contender`) in `windows` windows, each of them training `window_s` seconds of each
    window in alternating slices of `slice_s`.

    This VM's speed shifts by ~15 % for tens of seconds at a time (the same bare loop reads
    ~126 or ~145 img/s), so two runs one after the other compare the machine's moods, not the
    code. Here both run alive together, and every slice one of them (its whole process tree:
    for Ray, the driver and the cluster it started) is SIGSTOPped while the other trains, in
    the order second, first, first, second, ... so that a drift within a window falls on both.
    A slice counts only steps that started and ended inside it, timed by the contender's own
    per-step record. Stopping the Ray cluster's daemons, not only its worker, is the harder test
    for Ray: they wake to a backlog of timers at each slice."""
    (first, second), procs, sources = list(contenders), {}, {}
    for name, start in contenders.items():  # each starts alone: start-up is not what this times
        procs[name], sources[name] = start()
        _wait_for_steps(sources[name], batch, name, WARMUP * 10, procs[name])
        if name == first:
            _signal(_tree(procs[name]), signal.SIGSTOP)
    per_window = max(1, round(window_s / slice_s))
    slices: dict[str, list[tuple[int, float, float]]] = {first: [], second: []}  # (window, start, end)
    running = second
    try:
        for k in range(windows):
            for j in range(per_window):
                for on in (second, first) if j % 2 == 0 else (first, second):
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
    for name, spans in slices.items():
        steps = _steps(sources[name], batch)
        rates[name] = []
        for k in range(windows):
            inside = [dt for w, a, b in spans if w == k for t, dt in steps if a <= t - dt and t <= b]
            if not inside:
                sys.exit(f"{name}: no whole step inside the slices of window {k + 1}")
            rates[name].append(len(inside) * batch / sum(inside))
    return rates


def _wait_for_steps(source: str, batch: int, name: str, n: int, proc: subprocess.Popen) -> None:
    while proc.poll() is None:
        if len(_steps(source, batch)) >= n:
            return
        time.sleep(1)
    sys.exit(f"{name} exited ({proc.returncode}) before training {n} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window", type=int, default=10, help="steps per window of the runs timed alone")
    ap.add_argument("--width", type=int, default=64, help="DCGAN channel width (64: the DCGAN paper's)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray x1 / x2 comparison")
    ap.add_argument("--no-scaling", action="store_true", help="skip Ray x2")
    ap.add_argument("--paired-window-s", type=float, default=9.0,
                    help="seconds each run of a pair trains in one of its windows (see `paired`)")
    ap.add_argument("--paired-slice-s", type=float, default=3.0, help="seconds between a pair's turns")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 pair (for CPUs without native bf16)")
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

        def pair(first: tuple, second: tuple) -> dict[str, list[float]]:
            return paired(dict([first, second]), b, n, args.paired_window_s, args.paired_slice_s)

        def train(tag, extra=(), cli=()):
            return lambda: train_contender(shards, tmp, tag, w, b, list(extra), list(cli))

        def bare_in(precision):
            return lambda: bare_contender(shards, tmp, f"bare-{precision}", w, b, precision)

        runs = pair(("bare_fp32", bare_in("fp32")),
                    ("pipeline_fp32", train("fp32", ["train.precision=fp32", "train.channels_last=off"])))
        if not args.no_bf16:
            runs |= pair(("bare_bf16", bare_in("bf16")), ("pipeline_default", train("default")))
            tags = _paired_run(f"sqlite:///{tmp / 'paired-default.db'}").data.tags
            out["default_precision"] = {"precision": tags.get("precision"), "channels_last": tags.get("channels_last")}
        if args.compile:
            runs["bare_bf16_compiled"] = bare(shards, w, b, "bf16", n, k, compiled=True)
        if not args.no_ray:
            runs |= pair(("ray_1_worker", train("ray", cli=["--launcher", "ray"])), ("local_beside_ray", train("local")))
            if not args.no_scaling:
                runs["ray_2_workers"], _ = pipeline(shards, tmp, "ray2", w, 2 * b, n, k, [],
                                                    ["--workers", "2", "--strategy", "ddp"])
    out["img_per_s"] = {name: round(med(r), 1) for name, r in runs.items()}
    out["windows_img_per_s"] = {name: [round(x, 1) for x in r] for name, r in runs.items()}
    ips = out["img_per_s"]

    def per_window(x: str, y: str) -> float:  # a pair's windows are paired in time: the median of their ratios
        return round(med(p / q for p, q in zip(runs[x], runs[y])), 3)

    # ratios across pairs compare runs at different times, so they carry the VM's drift
    out["ratios"] = {"pipeline_over_bare_fp32": per_window("pipeline_fp32", "bare_fp32")}
    if not args.no_bf16:
        out["ratios"] |= {"pipeline_over_bare_bf16": per_window("pipeline_default", "bare_bf16"),
                          "default_over_fp32_pipeline": round(ips["pipeline_default"] / ips["pipeline_fp32"], 3),
                          "bf16_over_fp32_bare": round(ips["bare_bf16"] / ips["bare_fp32"], 3)}
    if args.compile:
        out["ratios"]["compiled_over_eager_bf16_bare"] = round(ips["bare_bf16_compiled"] / ips["bare_bf16"], 3)
    if not args.no_ray:
        out["ratios"]["ray_over_local_1_worker"] = per_window("ray_1_worker", "local_beside_ray")
    if not args.no_ray and not args.no_scaling:
        # not paired: Ray x2 runs after the pair, so this ratio carries the VM's drift between them
        out["ratios"]["ray_2_over_1_workers"] = round(ips["ray_2_workers"] / ips["ray_1_worker"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

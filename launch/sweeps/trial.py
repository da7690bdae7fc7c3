"""One trial of a sweep, run by Ray Tune in its own process: an ordinary gantry run.

The same `train_worker` as `gantry train` (trainer, data stream, checkpoints, health monitor),
in this process for one worker or on Ray Train workers for several (`on_workers`), in its own run dir `<sweep dir>/trials/<trial id>` and its own MLflow run, a child
of the sweep's. After every save (each `report_kimg`) it reports the evaluation to Tune with
the checkpoint, so that

  - a trial whose process died is restarted by Tune from its last reported checkpoint;
  - PBT's exploit hands a trial another trial's checkpoint and new values for the searched keys:
    the trial continues from it (weights, optimizers, EMA, data position, RNG) under its new
    config, in its own MLflow run, and logs the searched keys' values as metrics `sweep/<key>`
    so its lineage reads off its charts;
  - ASHA stops a trial by ending its process; the driver closes its MLflow run.

A run the health monitor stops (divergence it could not roll back) ends the trial with outcome
`diverged` instead of an error: retrying the same settings would diverge again.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time

from launch import embedded_ray


def run_trial(params: dict, base: dict, setup: dict) -> None:
    """`params`: the searched keys' values for this trial; `base`: the resolved config every
    trial starts from; `setup`: {"parent_run_id", "trials_dir", "threads", "cpus_per_worker"}
    (threads: torch's, per worker)."""
    import torch
    from ray import tune

    from pipeline import checkpoint, console, storage
    from pipeline.config import from_dict, with_overrides
    from pipeline.errors import HealthStopped
    from pipeline.worker import run_dir_for, train_worker
    from launch.sweeps.spec import assignment

    embedded_ray.foreground()
    torch.set_num_threads(setup["threads"])
    trial = tune.get_context().get_trial_id()
    console.speak_for(f"trial {trial}")
    cfg = with_overrides(from_dict(base), [assignment(k, v) for k, v in params.items()]
                         + [assignment("train.out_dir", setup["trials_dir"]), assignment("name", trial)], f"trial {trial}")
    run_dir = run_dir_for(cfg)

    restored, resume = tune.get_checkpoint(), None
    if restored is not None:
        with restored.as_directory() as d:
            resume = checkpoint.adopt_checkpoint(d, storage.join(run_dir, "checkpoints"))
    run_id = child_run(cfg, setup["parent_run_id"], trial, params)
    last: dict = {}

    def report(path, info):
        last.update(info)
        with _local(path) as local:  # Tune persists the checkpoint to the sweep's storage here
            tune.report({**_numbers(info), "health": info["health"], "outcome": "running"},
                        checkpoint=tune.Checkpoint.from_directory(local))

    def diverged():
        tune.report({**_numbers(last), "health": "divergence", "outcome": "diverged"})

    log_values(cfg, run_id, params, resume)
    if cfg.workers > 1:
        on_workers(cfg, resume, run_id, {"name": trial, "threads": setup["threads"], "cpus": setup["cpus_per_worker"]},
                   report, diverged)
        return
    try:
        train_worker(cfg, resume=resume, on_checkpoint=report, tracking_run_id=run_id)
    except HealthStopped as e:
        console.say(str(e))
        diverged()


def on_workers(cfg, resume: str | None, run_id: str, trial: dict, report, diverged) -> None:
    """The trial on `cfg.workers` Ray Train workers (launch/ray_train.py), started from this
    process: rank 0's report at each save reaches this thread through a queue and goes to
    Tune from here, with its checkpoint. Ray Train itself does not restart the group: a worker
    that dies fails the trial, which Tune restarts from its last checkpoint as it does a
    one-worker trial."""
    import threading

    from ray.train.v2.api.callback import UserCallback
    from ray.util.queue import Empty, Queue

    from launch.ray_train import run_ray

    reports = Queue(actor_options={"num_cpus": 0})

    class Forward(UserCallback):  # runs in Ray Train's controller
        def after_report(self, run_context, metrics, checkpoint):
            reports.put(metrics[0])

    failed: list[BaseException] = []

    def fit():
        try:
            run_ray(cfg, resume=resume, max_failures=0, tracking_run_id=run_id, trial=trial, callbacks=(Forward(),))
        except BaseException as e:  # re-raised in the trial's thread, which Tune watches
            failed.append(e)

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    while fitting.is_alive() or not reports.empty():
        try:
            info = reports.get(timeout=1)
        except Empty:
            continue
        if info.get("outcome") == "diverged":
            diverged()
        else:
            report(info.pop("checkpoint"), info)
    if failed:
        raise failed[0]


@contextlib.contextmanager
def _local(path: str):
    """A checkpoint as a local directory: Tune reads only those; a run dir on an object store is
    copied to a temporary one first."""
    from pipeline import storage

    if storage.is_local(path):
        yield storage.local_path(path)
        return
    with tempfile.TemporaryDirectory(prefix="gantry-trial-") as d:
        for name in storage.list_names(path):
            with open(os.path.join(d, name), "wb") as f:
                f.write(storage.read_bytes(storage.join(path, name)))
        yield d


def _numbers(info: dict) -> dict:
    """Tune compares and sorts results: only finite numbers go in."""
    return {k: v for k, v in info.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def child_run(cfg, parent_run_id: str, trial: str, params: dict) -> str:
    """This trial's MLflow run: found by its tags when the trial restarts, else created under
    the sweep's parent run."""
    from mlflow import MlflowClient

    from pipeline.tracking.store import resolve_uri

    client = MlflowClient(resolve_uri(cfg.tracking.uri))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
    found = client.search_runs([exp_id], f"tags.gantry_trial = '{trial}' and tags.mlflow.parentRunId = "
                                         f"'{parent_run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    name = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    return client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent_run_id,
                                                          "gantry_trial": trial}).info.run_id


def log_values(cfg, run_id: str, params: dict, resume: str | None) -> None:
    """The searched keys' values from this (re)start on, at the step it starts from."""
    from mlflow import MlflowClient

    from pipeline import checkpoint
    from pipeline.tracking.store import resolve_uri

    step = int(checkpoint.read_meta(resume)["step"]) if resume else 0
    numbers = {f"sweep/{k}": float(v) for k, v in params.items() if isinstance(v, (int, float))}
    if numbers:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        MlflowClient(resolve_uri(cfg.tracking.uri)).log_batch(
            run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

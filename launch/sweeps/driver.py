"""`gantry sweep`'s driver: trials under Ray Tune, one MLflow parent run, a result a user acts on.

Layout of a sweep, under `<train.out_dir>/<sweep name>/`:
  sweep.json          the parent MLflow run's id and what started the sweep (read by --resume)
  ray/<name>/         Ray Tune's experiment state and the checkpoints trials reported
  trials/<trial id>/  each trial's gantry run dir (checkpoints, samples, config.yaml)
  summary.txt         one row per trial: searched values, outcome, metric, kimg, MLflow run
  stability-map.png   for a grid over two keys: final metric per cell, diverged / collapsed marked
  best-config.yaml    the user's config with the best trial's values (its own length and names)
  pbt_*.txt           PBT: every exploit / explore (pbt_global.txt), and per trial (Tune's replay format)
The parent run holds the summary, the map, the best config, the PBT policies and metric `best`.

Outcomes: finished (ran its whole budget), stopped (ASHA ended it early), diverged (the health
monitor stopped it), collapsed (finished, but flagged mode collapse, or a toy run that missed
modes), failed (its process died more than `max_failures` times). A sweep fails only when no
trial produced its metric.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time

from ray.tune import Callback

from launch.sweeps.spec import SweepSpec, assignment
from pipeline import console, storage
from pipeline.config import RunConfig, to_yaml, with_overrides
from pipeline.errors import GantryError

STATE = "sweep.json"
TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")  # in the name of a trial's Tune directory


def sweep_dir(cfg: RunConfig, spec: SweepSpec) -> str:
    return storage.join(cfg.train.out_dir, spec.name)


def run_sweep(cfg: RunConfig, spec: SweepSpec, base: RunConfig, sources: dict, address: str | None = None,
              resume: bool = False) -> dict:
    """Run (or with `resume`, continue) the sweep; returns its best row. `cfg`: the user's
    config; `base`: the same with the sweep's budget; `sources`: the files, for the record."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from launch import ray_train
    from launch.sweeps.trial import run_trial

    cfg, _ = ray_train.absolute(cfg, None)
    base, _ = ray_train.absolute(base, None)
    root = sweep_dir(cfg, spec)
    state_url = storage.join(root, STATE)
    if resume and not storage.exists(state_url):
        raise GantryError(f"--resume: no sweep at {root} (no {STATE})")
    if not resume and storage.exists(state_url):
        raise GantryError(f"{root} holds a sweep already: continue it with --resume, or rename the sweep")
    storage_path, storage_fs = ray_train.ray_storage(root)
    # Ctrl-C interrupts a sweep as it does any gantry command (exit 130), and the sweep is left
    # to --resume. Tune's own handler would end fit() normally, as if every trial had run.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # A trial the health monitor stopped before its first evaluation reports no metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Trials are recorded in MLflow. Tune's default CSV/JSON/TensorBoard loggers would write a
    # second copy, and tensorboardX closes its writer from an exit hook that joins a
    # multiprocessing queue's feeder thread: one CI run hung for 120 s after its Ctrl-C line,
    # where only exit hooks run, and that is the one among them that can block.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    started = ray_train.connect(address, math.ceil(spec.budget.concurrent * spec.budget.cpus_per_trial))
    try:
        ray_train.refuse_local_paths_on_a_cluster(base)
        if resume:
            parent = json.loads(storage.read_bytes(state_url))["parent_run_id"]
        else:
            parent = parent_run(base, spec, sources)
            storage.write_bytes(state_url, json.dumps({"parent_run_id": parent, **sources}, indent=1).encode())
        # A trial of several workers holds no CPU itself: it waits on its Ray Train workers,
        # which share the trial's CPUs. (Tune refuses a request of nothing; one byte of Ray's
        # memory resource is something.)
        per_worker = spec.budget.cpus_per_trial / base.workers
        setup = {"parent_run_id": parent, "trials_dir": storage.join(root, "trials"),
                 "threads": max(1, round(per_worker)), "cpus_per_worker": per_worker}
        trainable = tune.with_resources(tune.with_parameters(run_trial, base=base.model_dump(mode="json"), setup=setup),
                                        {"cpu": spec.budget.cpus_per_trial} if base.workers == 1 else {"memory": 1})
        report = Report(spec, base.train.kimg)
        experiment = os.path.join(storage_path, spec.name) if storage_fs is None else f"{storage_path}/{spec.name}"
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable, storage_filesystem=storage_fs,
                                       resume_unfinished=True, resume_errored=True, param_space=search_space(spec))
        else:
            tuner = tune.Tuner(
                trainable, param_space=search_space(spec),
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.budget.trials,
                                            reuse_actors=False,
                                            search_alg=BasicVariantGenerator(random_state=spec.seed,
                                                                             max_concurrent=spec.budget.concurrent),
                                            scheduler=scheduler(spec, base)),
                run_config=tune.RunConfig(name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                          failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                                          # PBT clones other trials' checkpoints: keep them all
                                          checkpoint_config=tune.CheckpointConfig(
                                              num_to_keep=None if spec.scheduler.kind == "pbt" else 2),
                                          callbacks=[report], verbose=0))
        console.say(f"sweep {spec.name}: {describe(spec)}; {spec.budget.concurrent} at a time, {base.train.kimg:g} "
                    f"kimg each; dir {root}; MLflow {base.tracking.uri} run {parent}")
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            console.say(f"sweep {spec.name} interrupted; its trials keep their checkpoints: continue it with the "
                        f"same command and --resume")
            raise
        rows = [row_of(r, spec, base) for r in grid]
    finally:
        if started:
            ray_train.disconnect(address)
    return finish(cfg, spec, base, root, parent, rows, experiment, storage_fs)


def describe(spec: SweepSpec) -> str:
    keys = ", ".join(f"{k} ({describe_dim(d)})" for k, d in spec.space.items())
    return f"{spec.scheduler.kind} over {keys}, {spec.mode} {spec.metric}"


def search_space(spec: SweepSpec) -> dict:
    return {k: d.tune() for k, d in spec.space.items()}


def scheduler(spec: SweepSpec, base: RunConfig):
    """Tune's trial scheduler; trials report at every `report_kimg` with time in kimg."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s, report, kimg = spec.scheduler, base.train.eval_kimg, base.train.kimg
    if s.kind == "asha":
        return _past_the_end(ASHAScheduler, kimg)(time_attr="kimg", max_t=kimg, grace_period=s.grace_kimg or report,
                                                  reduction_factor=s.reduction_factor)
    if s.kind == "pbt":
        return _past_the_end(PopulationBasedTraining, kimg)(
            time_attr="kimg", perturbation_interval=s.interval_kimg or report, burn_in_period=s.burn_in_kimg,
            hyperparam_mutations=search_space(spec), quantile_fraction=s.quantile,
            resample_probability=s.resample_probability, synch=s.synch, log_config=True, require_attrs=False)
    return FIFOScheduler()


def _past_the_end(scheduler_class, kimg: float):
    """The scheduler, leaving a trial's last report alone: a trial stopped there would be killed
    while its tracker flushes the final evaluation, and one exploited there would end on another
    trial's checkpoint without training under its new values."""

    class LastReportPasses(scheduler_class):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get("kimg", 0) >= kimg - 1e-9:
                return self.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return LastReportPasses


def parent_run(base: RunConfig, spec: SweepSpec, sources: dict) -> str:
    from mlflow import MlflowClient

    from pipeline.tracking.store import resolve_uri

    client = MlflowClient(resolve_uri(base.tracking.uri))
    exp = client.get_experiment_by_name(base.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(base.tracking.experiment)
    run = client.create_run(exp_id, run_name=f"sweep {spec.name}",
                            tags={"gantry_sweep": spec.name, "gantry_sweep_metric": f"{spec.mode} {spec.metric}"})
    for k, v in {**sources, "scheduler": spec.scheduler.kind, "kimg_per_trial": base.train.kimg,
                 "concurrent": spec.budget.concurrent, **{f"space.{k}": describe_dim(d) for k, d in spec.space.items()}}.items():
        client.log_param(run.info.run_id, k, str(v)[:6000])
    return run.info.run_id


def describe_dim(d) -> str:
    return f"{d.kind} {d.values}"


class Report(Callback):
    """The driver's console while trials run: one line per trial that ends or restarts, and a
    progress line with the best value so far."""

    def __init__(self, spec: SweepSpec, kimg: float):
        self.spec, self.kimg, self.best, self.done = spec, kimg, None, 0
        self.planned = spec.budget.trials * math.prod(len(d.values) for d in spec.space.values() if d.kind == "grid")

    def _values(self, trial) -> str:
        return ", ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.spec.space)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.spec.metric)
        if value is not None and (self.best is None or better(value, self.best, self.spec.mode)):
            self.best = value
        running = sum(t.status == "RUNNING" for t in trials)
        line = f"trials {self.done}/{self.planned} done, {running} running"
        if self.best is not None:
            line += f", best {self.spec.metric} {self.best:.4g}"
        console.progress(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        outcome = outcome_of(r, self.kimg)
        score = f"{self.spec.metric} {r[self.spec.metric]:.4g}" if self.spec.metric in r else "no score"
        console.say(f"trial {trial.trial_id} {outcome} at kimg {r.get('kimg', 0):.0f}: {score} ({self._values(trial)})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        console.say(f"trial {trial.trial_id} failed ({self._values(trial)}): {_last_line(trial.error_file)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        console.say(f"trial {trial.trial_id} stopped ({_last_line(trial.error_file)}); restarting it from its last "
                    f"checkpoint")


def better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def outcome_of(result: dict, kimg: float) -> str:
    if result.get("outcome") == "diverged":
        return "diverged"
    if result.get("kimg", 0) < kimg - 1e-6:
        return "stopped"
    collapsed = "mode_collapse" in result.get("health", "") or (
        "modes_covered" in result and result["modes_covered"] < result["modes_total"])
    return "collapsed" if collapsed else "finished"


def row_of(result, spec: SweepSpec, base: RunConfig) -> dict:
    m = result.metrics or {}
    found = TRIAL_ID.search(os.path.basename(result.path))  # a trial that never reported
    value = m.get(spec.metric)
    return {"trial": m.get("trial_id") or (found.group(1) if found else "?"),
            "values": {k: result.config.get(k) for k in spec.space},
            "outcome": "failed" if result.error else outcome_of(m, base.train.kimg),
            "value": value if value is not None and math.isfinite(value) else None, "kimg": m.get("kimg", 0.0),
            "modes": f"{m['modes_covered']:.0f}/{m['modes_total']:.0f} modes" if "modes_covered" in m else None}


def finish(cfg: RunConfig, spec: SweepSpec, base: RunConfig, root: str, parent: str, rows: list[dict],
           experiment: str, storage_fs) -> dict:
    """Close the trials' MLflow runs, write and log the summary, the map and the best config."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from launch.sweeps.stability_map import stability_map
    from pipeline.tracking.store import resolve_uri

    client = MlflowClient(resolve_uri(base.tracking.uri))
    children = {r.data.tags.get("gantry_trial"): r for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)}
    for row in rows:
        run = children.get(row["trial"])
        row["run_id"] = run.info.run_id if run else None
        if run is None:
            continue
        client.set_tag(run.info.run_id, "sweep_outcome", row["outcome"])
        if run.info.status == "RUNNING":  # its process was ended by the scheduler or died
            client.set_terminated(run.info.run_id, "FAILED" if row["outcome"] == "failed" else
                                  "KILLED" if row["outcome"] == "stopped" else "FINISHED")
    scored = [r for r in rows if r["value"] is not None and r["outcome"] not in ("diverged", "failed")]
    best = None
    for r in scored:
        if best is None or better(r["value"], best["value"], spec.mode):
            best = r
    files = {"summary.txt": summary_table(rows, spec).encode()}
    cells = stability_map(rows, spec)
    if cells is not None:
        files["stability-map.png"] = cells
    if best is not None:
        best_cfg = with_overrides(cfg, [assignment(k, v) for k, v in best["values"].items()], "best trial")
        files["best-config.yaml"] = (f"# sweep {spec.name}, trial {best['trial']}: {spec.metric} {best['value']:.4g}\n"
                                     + to_yaml(best_cfg)).encode()
    files.update(pbt_policies(experiment, storage_fs))
    with tempfile.TemporaryDirectory(prefix="gantry-sweep-") as staged:  # MLflow uploads local files
        for name, data in files.items():
            storage.write_bytes(storage.join(root, name), data)
            with open(os.path.join(staged, name), "wb") as f:
                f.write(data)
        client.log_artifacts(parent, staged)
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("finished", "stopped", "collapsed", "diverged", "failed")}
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in
                                      {"trials": len(rows), **counts, **({"best": best["value"]} if best else {})}.items()])
    client.set_terminated(parent, "FINISHED" if best else "FAILED")
    console.say(f"sweep {spec.name}: {len(rows)} trials: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n))
    if best is None:
        raise GantryError(f"sweep {spec.name}: no trial produced {spec.metric}; see {storage.join(root, 'summary.txt')}")
    console.say(f"best trial {best['trial']}: {spec.metric} {best['value']:.4g} ("
                + ", ".join(f"{k}={_fmt(v)}" for k, v in best["values"].items()) + ")")
    console.say(f"its config: {storage.join(root, 'best-config.yaml')}; register its checkpoint: "
                f"gantry register {best['run_id']} --name {cfg.name}")
    return best


def summary_table(rows: list[dict], spec: SweepSpec) -> str:
    head = ("TRIAL", *spec.space, "OUTCOME", spec.metric.upper(), "KIMG", "MLFLOW RUN")
    lines = [head] + [(r["trial"], *(_fmt(r["values"][k]) for k in spec.space), r["outcome"],
                       "" if r["value"] is None else f"{r['value']:.4g}", f"{r['kimg']:.0f}", r.get("run_id") or "")
                      for r in sorted(rows, key=lambda r: r["trial"])]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def pbt_policies(experiment: str, storage_fs) -> dict[str, bytes]:
    """Tune's PBT log: per trial, each exploit (from which trial, at which kimg) with the old and
    new values; `ray.tune.schedulers.PopulationBasedTrainingReplay` replays one."""
    if storage_fs is not None:
        return {}
    return {name: open(os.path.join(experiment, name), "rb").read() for name in sorted(os.listdir(experiment))
            if name.startswith("pbt_")} if os.path.isdir(experiment) else {}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _last_line(path: str | None) -> str:
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "see the sweep's log"
    return lines[-1] if lines else "see the sweep's log"

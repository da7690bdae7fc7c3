"""`gantry sweep` on the ring under an embedded Ray Tune, each trial an ordinary gantry run:
a 2x2 grid tracked as one MLflow parent run with a child per trial and a stability map, whose
cells equal runs of the same settings started by hand; a trial whose process is SIGKILLed
restarts from its last checkpoint and still ends where an uninterrupted run ends; PBT hands a
trial another's checkpoint and new values, recorded in its run and in the policy log."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from launch.commands.history import history
from pipeline import checkpoint
from pipeline.config import load_config
from ray_helpers import REPO, in_cmdline, matching, stop_tree, survivors

GRID = """name: grid
metric: hq_pct
mode: max
space:
  g_optim.lr: {grid: [0.001, 0.003]}
  d_optim.lr: {grid: [0.001, 0.003]}
budget: {kimg: 64, report_kimg: 32, concurrent: 2}
"""


def sweep_cmd(tmp_path: Path, text: str, *extra: str) -> list[str]:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(text)
    return [sys.executable, "-m", "launch.cli", "sweep", "configs/toy-ring.yaml", str(spec),
            f"train.out_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", *extra]


def by_hand(tmp_path: Path, kimg: float, report: float, **values) -> dict:
    """The same settings as a trial, trained by `gantry train`: its final evaluation."""
    out = tmp_path / "by-hand" / "-".join(f"{v:g}" for v in values.values())
    r = subprocess.run([sys.executable, "-m", "launch.cli", "train", "configs/toy-ring.yaml", f"train.out_dir={out}",
                        f"train.kimg={kimg}", f"train.eval_kimg={report}", f"train.checkpoint_kimg={report}",
                        "tracking.enabled=false", *(f"{k}={v}" for k, v in values.items())],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return checkpoint.read_meta(checkpoint.latest_checkpoint(str(out / "toy-ring" / "checkpoints")))["eval"]


def kill_one_after_first_reports(cmd: list[str], sweep: Path, reports: int, process: str, running: int,
                                 trials: int) -> str:
    """Run the sweep `cmd` of `trials` trials (its dir `sweep`); once `reports` of them have
    reported their second checkpoint, SIGKILL one of the `running` processes whose command line
    has `process`. The sweep must end well, with one trial restarted and resumed from its
    checkpoint: its output.
    The second checkpoint: a trial writes a checkpoint's directory before the driver records it,
    and a trial killed in between restarts from nothing (seen once in CI); a trial goes on to
    its second only after handing the first to the driver."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(list((sweep / "ray" / sweep.name).glob("*/checkpoint_000001"))) < reports \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        found = matching(in_cmdline(process))
        assert len(found) == running, f"{running} {process} processes should be running after the first reports"
        found[0].kill()
        out, _ = proc.communicate(timeout=600)
    finally:
        stop_tree(proc)
    assert proc.returncode == 0, out[-3000:]
    assert sum("restarting it from its last checkpoint" in ln for ln in out.splitlines()) == 1, out
    (ended,) = [ln for ln in out.splitlines() if ln.startswith(f"gantry: sweep {sweep.name}: {trials} trials: ")]
    assert "failed" not in ended and "diverged" not in ended, ended
    log = next((sweep / "logs").glob("sweep-*.log")).read_text()
    assert log.count("; resumed from ") == 1
    no_ray_left()
    return out


def no_ray_left():
    assert not survivors(in_cmdline("ray::"), within=30)


@pytest.mark.slow
def test_grid_is_tracked_mapped_and_equals_runs_by_hand(tmp_path):
    r = subprocess.run(sweep_cmd(tmp_path, GRID), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    console = r.stdout.splitlines() + r.stderr.splitlines()
    assert all(ln.startswith("gantry: ") for ln in console), console
    assert sum(" at kimg 64: hq_pct " in ln for ln in console) == 4, console
    assert any(ln.startswith("gantry: best trial ") for ln in console)
    no_ray_left()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gantry").experiment_id
    (parent,) = client.search_runs([exp], "tags.gantry_sweep = 'grid'")
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 4 and all(t.info.status == "FINISHED" and t.data.tags["sweep_outcome"] for t in trials)
    assert {(t.data.params["g_optim.lr"], t.data.params["d_optim.lr"]) for t in trials} == {
        (g, d) for g in ("0.001", "0.003") for d in ("0.001", "0.003")}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best"] == max(t.data.metrics["hq_pct"] for t in trials)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"stability-map.png", "summary.txt", "best-config.yaml"} <= artifacts
    png = Path(client.download_artifacts(parent.info.run_id, "stability-map.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Two cells, started by hand with the same seed: the same modes and HQ %.
    for t in sorted(trials, key=lambda t: t.data.metrics["hq_pct"])[::3]:
        values = {k: float(t.data.params[k]) for k in ("g_optim.lr", "d_optim.lr")}
        hand = by_hand(tmp_path, 64, 32, **values)
        assert hand["hq_pct"] == pytest.approx(t.data.metrics["hq_pct"], abs=1e-4), values
        assert hand["modes_covered"] == t.data.metrics["modes_covered"], values

    best = load_config(tmp_path / "runs" / "grid" / "best-config.yaml")
    winner = max(trials, key=lambda t: t.data.metrics["hq_pct"])
    assert best.g_optim.lr == float(winner.data.params["g_optim.lr"]) and best.train.kimg == 1536
    rows = history(client, exp)
    assert [row["name"] for row in rows] == ["sweep grid (4 trials)"]
    assert rows[0]["best"] == {"metric": "hq_pct", "value": parent.data.metrics["best"]}


@pytest.mark.slow
def test_a_killed_trial_restarts_from_its_checkpoint_and_ends_as_a_straight_run(tmp_path):
    text = GRID.replace("[0.001, 0.003]}\n  d_optim.lr: {grid: [0.001, 0.003]}", "[0.001, 0.003]}").replace(
        "kimg: 64", "kimg: 160")
    out = kill_one_after_first_reports(sweep_cmd(tmp_path, text), tmp_path / "runs" / "grid", 2,
                                       "ray::ImplicitFunc", 2, 2)
    (restarted,) = [ln.split()[2] for ln in out.splitlines() if "restarting it from its last checkpoint" in ln]

    # exact resume: the restarted trial ends where a straight run of its settings ends
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gantry").experiment_id
    (t,) = client.search_runs([exp], f"tags.gantry_trial = '{restarted}'")
    hand = by_hand(tmp_path, 160, 32, **{"g_optim.lr": float(t.data.params["g_optim.lr"])})
    assert hand["hq_pct"] == pytest.approx(t.data.metrics["hq_pct"], abs=1e-4)
    assert t.data.metrics["kimg"] == 160


PBT = """name: pbt
metric: hq_pct
mode: max
space:
  g_optim.lr: {loguniform: [0.0003, 0.003]}
  d_optim.lr: {loguniform: [0.0003, 0.003]}
budget: {kimg: 96, report_kimg: 32, trials: 2, concurrent: 2}
scheduler: {kind: pbt, interval_kimg: 32, quantile: 0.5, synch: true}
"""


@pytest.mark.slow
def test_pbt_continues_a_trial_from_anothers_checkpoint_with_new_values(tmp_path):
    r = subprocess.run(sweep_cmd(tmp_path, PBT), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    no_ray_left()
    root = tmp_path / "runs" / "pbt"
    policies = [json.loads(ln) for p in root.glob("pbt_policy_*.txt") for ln in p.read_text().splitlines()]
    # synchronous: at each interval both trials have reported, and the worse takes over the better
    # one's checkpoint (asynchronous, a trial that reports while the other has not cannot be ranked)
    assert policies, "with two trials and quantile 0.5 the worse one takes over the better one's checkpoint"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gantry").experiment_id
    (parent,) = client.search_runs([exp], "tags.gantry_sweep = 'pbt'")
    assert any(a.path.startswith("pbt_policy_") for a in client.list_artifacts(parent.info.run_id))
    trials = {t.data.tags["gantry_trial"]: t for t in client.search_runs([exp], "tags.mlflow.parentRunId != ''")}
    exploited = 0
    for trial, t in trials.items():
        values = sorted(client.get_metric_history(t.info.run_id, "sweep/g_optim.lr"), key=lambda m: m.step)
        if len({m.value for m in values}) < 2:  # restarted (PBT pauses trials) but never given new values
            continue
        exploited += 1
        # the new value holds from the step it took over at, and the run ended under it
        final = checkpoint.read_meta(checkpoint.latest_checkpoint(str(root / "trials" / trial / "checkpoints")))
        assert final["config"]["g_optim"]["lr"] == pytest.approx(values[-1].value)
        assert values[-1].step > 0 and final["kimg"] == 96
    assert exploited >= 1


RESUMED = """name: resumed
metric: hq_pct
mode: max
space:
  health.max_loss: {grid: [0, 0.5]}
budget: {kimg: 64, report_kimg: 32, concurrent: 1}
"""


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_and_a_diverged_trial_is_counted(tmp_path):
    """The second trial's health monitor stops it (rpgan's losses start near 0.69 > max_loss
    0.5, under policy stop): it counts as diverged and does not end the sweep."""
    cmd = sweep_cmd(tmp_path, RESUMED, "health.policy=stop", "health.window=4", "train.log_every=10")
    # A shell that starts a job in the background (`make test &`) makes it ignore SIGINT, and its
    # children inherit that: the sweep gets Ctrl-C as it would from a terminal.
    # PYTHONFAULTHANDLER: a sweep that does not exit is sent SIGABRT, and prints where it hung
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("gantry: progress trials 0/2 done, 1 running"):
                # Ctrl-C while the first trial runs, past its first report and checkpoint: the
                # resume then continues a trial that had staged uploads pending
                proc.send_signal(signal.SIGINT)
                break
        try:
            out = "".join(lines) + proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("the sweep did not exit 120 s after Ctrl-C:\n" + proc.communicate(timeout=30)[0][-6000:])
    finally:
        stop_tree(proc)
    assert proc.returncode == 130, out[-3000:]
    no_ray_left()

    r = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " stopped (" not in r.stdout, r.stdout  # the interrupted trial went on without failing
    # the first trial, 64 kimg at the ring's lr, may miss a mode (collapsed); the second diverged
    assert any(re.fullmatch(r"gantry: sweep resumed: 2 trials: 1 (finished|collapsed), 1 diverged", ln)
               for ln in r.stdout.splitlines()), r.stdout
    no_ray_left()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    rows = history(client, client.get_experiment_by_name("gantry").experiment_id)
    assert [row["name"] for row in rows] == ["sweep resumed (2 trials)"]
    summary = (tmp_path / "runs" / "resumed" / "summary.txt").read_text()
    assert "diverged" in summary


PAIR = """name: pair
metric: hq_pct
mode: max
space:
  g_optim.lr: {grid: [0.001]}
budget: {kimg: 96, report_kimg: 32, concurrent: 1, cpus_per_trial: 2}
"""


@pytest.mark.slow
def test_a_trial_on_two_workers_restarts_from_its_checkpoint_when_one_is_killed(tmp_path):
    """A trial of a two-worker config trains on two Ray Train workers, under DDP (`single` is one
    process); SIGKILL one after the first report and the trial restarts from that checkpoint and
    ends where a straight two-worker run of the same settings ends."""
    out = kill_one_after_first_reports(sweep_cmd(tmp_path, PAIR, "workers=2"), tmp_path / "runs" / "pair", 1,
                                       "ray::RayTrainWorker", 2, 1)
    assert all(ln.startswith("gantry: ") for ln in out.splitlines()), out  # the workers' lines went to the log

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("gantry").experiment_id
    (t,) = client.search_runs([exp], "tags.mlflow.parentRunId != ''")
    assert t.data.tags["workers"] == "2" and t.data.tags["strategy"] == "ddp" and t.data.metrics["kimg"] == 96
    straight = tmp_path / "straight"
    r = subprocess.run([sys.executable, "-m", "launch.cli", "train", "configs/toy-ring.yaml", "--launcher", "ray",
                        "--workers", "2", f"train.out_dir={straight}", "train.kimg=96", "train.eval_kimg=32",
                        "train.checkpoint_kimg=32", "g_optim.lr=0.001", "tracking.enabled=false"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hand = checkpoint.read_meta(checkpoint.latest_checkpoint(str(straight / "toy-ring" / "checkpoints")))["eval"]
    assert hand["hq_pct"] == pytest.approx(t.data.metrics["hq_pct"], abs=1e-4)
    no_ray_left()

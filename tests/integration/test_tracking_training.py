"""Real training runs tracked by a real `mlflow server`: 2 Ray workers, an outage mid-run, a resume."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.checkpoint import latest_checkpoint
from ray_helpers import REPO, build_mnist, train_cmd


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    steps = [m.step for m in client.get_metric_history(run_id, key)]
    assert steps == sorted(set(steps)), f"{key}: steps repeat or go back: {steps}"
    return steps


def _toy(out: Path, uri: str, experiment: str, kimg: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train", "configs/toy-ring.yaml", f"train.out_dir={out}",
            f"train.kimg={kimg}", "train.log_every=20", "train.eval_kimg=64", "train.checkpoint_kimg=64",
            "tracking.enabled=true", f"tracking.uri={uri}", f"tracking.experiment={experiment}", *extra]


@pytest.mark.slow
def test_two_worker_ray_run_logs_everything_and_reads_back_identical(mlflow_server, tmp_path):
    shards = build_mnist(tmp_path / "shards")
    cmd = train_cmd(shards, tmp_path / "out", 1.024, 0.512, "--workers", "2", "--strategy", "ddp",
                    "tracking.enabled=true", f"tracking.uri={mlflow_server.uri}", "tracking.experiment=two-workers",
                    "train.eval_kimg=0.512", "eval.metrics=[]")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "two-workers")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "dcgan" and run.data.params["workers"] == "2"
    assert run.data.tags["workers"] == "2" and run.data.tags["strategy"] == "ddp"
    steps = _steps(client, run.info.run_id, "D_main/loss")
    assert steps[-1] == 32 and len(steps) == 4  # 1024 images / batch 32, logged every 8 steps
    assert any(f.path.endswith(".png") for f in client.list_artifacts(run.info.run_id, "images"))
    local = Path(latest_checkpoint(tmp_path / "out" / "mnist-dcgan" / "checkpoints"))
    remote = Path(client.download_artifacts(run.info.run_id, "checkpoints/latest", str(tmp_path / "dl")))
    for name in ("G_ema.safetensors", "meta.json"):
        assert (remote / name).read_bytes() == (local / name).read_bytes()


def _wait_for(what: str, probe, proc: subprocess.Popen, log: Path, timeout: float):
    """Poll `probe()` until it returns something truthy (returned); fail naming `what` if the
    training process exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) while waiting for {what}:\n"
                        f"{log.read_text()[-3000:]}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:g} s:\n{log.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.2)


def _server_steps(client: MlflowClient, experiment: str, key: str) -> list[int]:
    """Steps of `key` the server holds for the experiment's run; [] while there is none yet."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, key)] if runs else []


@pytest.mark.slow
def test_server_down_mid_run_training_finishes_and_every_step_lands_once(mlflow_server, tmp_path):
    # Output to a file, not a pipe nobody reads: a full pipe would stall the run and make it
    # look "still running" for the wrong reason.
    log = tmp_path / "train.log"
    ckpts = tmp_path / "toy-ring" / "checkpoints"
    with log.open("w") as out:
        proc = subprocess.Popen(_toy(tmp_path, mlflow_server.uri, "outage", 256), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        client = MlflowClient(mlflow_server.uri)
        # The outage starts mid-run: after the server has taken some of the run's metrics.
        _wait_for("D_main/loss point on the server", lambda: _server_steps(client, "outage", "D_main/loss"),
                  proc, log, 180)
        before = latest_checkpoint(ckpts)
        mlflow_server.stop()
        try:
            # Training goes on while the server is down: a newer checkpoint is written meanwhile.
            _wait_for("new checkpoint while the MLflow server is down",
                      lambda: (latest := latest_checkpoint(ckpts)) is not None and latest != before,
                      proc, log, 180)
        finally:
            mlflow_server.start()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    run = _only_run(MlflowClient(mlflow_server.uri), "outage")
    steps = _steps(MlflowClient(mlflow_server.uri), run.info.run_id, "D_main/loss")
    assert steps == list(range(20, 4000, 20)) + [4000]  # 256 kimg / batch 64 = 4000 steps


@pytest.mark.slow
def test_resumed_run_continues_the_same_mlflow_run(mlflow_server, tmp_path):
    first = subprocess.run(_toy(tmp_path, mlflow_server.uri, "resume", 64), cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    run_id = _only_run(client, "resume").info.run_id
    second = subprocess.run(_toy(tmp_path, mlflow_server.uri, "resume", 128, "--resume", "latest"), cwd=REPO,
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    run = _only_run(client, "resume")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert _steps(client, run_id, "D_main/loss") == list(range(20, 2000, 20)) + [2000]
    assert _steps(client, run_id, "modes_covered") == [1000, 2000]

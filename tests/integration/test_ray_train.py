"""`gantry train --workers 2` end to end under Ray Train, for each distributed strategy: real
Ray, real gloo, real MNIST shards planned by the driver; exit 0, no abort at exit, and a console
a person can read."""
from __future__ import annotations

import re
import subprocess

import pytest

from ray_helpers import BATCH, REPO, build_mnist, final_state, train_cmd

KIMG = 0.512  # 16 steps


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    return build_mnist(tmp_path_factory.mktemp("mnist") / "shards")


# What Ray, MLflow and DeepSpeed print that a person at the console has no use for.
NOISE = ["Token authentication", "core_worker.cc", "PreemptionWatcher", "Checkpoint successfully created",
         "Reporting training result", "INFO mlflow", "RayTrainWorker pid=", "TrainController pid=", "[INFO]",
         "Traceback", "terminate called"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_two_ray_workers_train_to_the_end(tmp_path, mnist_shards, strategy):
    uri = f"sqlite:///{tmp_path}/mlruns.db"  # tracking on: MLflow has its say at start-up
    cmd = train_cmd(mnist_shards, tmp_path, KIMG, 0.256, "--workers", "2", "--strategy", strategy,
                    "tracking.enabled=true", f"tracking.uri={uri}", verbose=False)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # The console: gantry's lines only, the start line once, progress, saves, the summary.
    console = r.stdout.splitlines() + r.stderr.splitlines()
    assert all(ln.startswith("gantry: ") for ln in console), console
    assert not [ln for ln in console if any(noise in ln for noise in NOISE)], console
    assert sum("2 workers" in ln and uri in ln for ln in console) == 1, console
    assert any(ln.startswith("gantry: progress kimg ") and "img/s" in ln for ln in console), console
    assert [ln for ln in console if ln.startswith("gantry: saved ")] == [
        "gantry: saved ckpt-000000008 at kimg 0.26", "gantry: saved ckpt-000000016 at kimg 0.51"]
    run_dir = tmp_path / "mnist-dcgan"
    [log] = (run_dir / "logs").iterdir()
    assert re.fullmatch(rf"gantry: finished mnist-dcgan in \S+ at kimg 0.51(: .*)?; run dir {run_dir}; log {log}",
                        console[-1]), console[-1]
    # The rest went to the log: Ray's and MLflow's lines, and no abort or traceback of ours.
    # (Ray's PlacementGroupCleaner actor queries the state API, which an embedded Ray without
    # dashboard lacks: its traceback is Ray's noise.)
    logged = log.read_text()
    assert "Reporting training result" in logged and "mlflow" in logged
    assert "terminate called" not in logged
    ours = [ln for ln in logged.splitlines() if "PlacementGroupCleaner" not in ln]
    assert not any("Traceback" in ln for ln in ours), logged[-3000:]

    meta, state = final_state(run_dir)
    steps = round(KIMG * 1000 / BATCH)
    assert meta["step"] == steps and meta["config"]["strategy"]["kind"] == strategy
    # every rank's stream position is in the checkpoint: 16 of its own batches in epoch 0
    assert [(d["geometry"]["rank"], d["epoch"], d["batches"]) for d in state["data"]] == [(0, 0, steps), (1, 0, steps)]
    # checkpoints stay in the run dir (Ray Train keeps no copies: a restarted group reads the run dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"ckpt-{steps // 2:09d}", f"ckpt-{steps:09d}"]
    assert not list(run_dir.glob("ray/**/ckpt-*"))
    assert (run_dir / "samples" / f"grid-{steps:09d}.png").is_file()


def test_local_launcher_refuses_many_workers(tmp_path, mnist_shards):
    cmd = train_cmd(mnist_shards, tmp_path, KIMG, 0.256, "--workers", "2", "--strategy", "ddp",
                    "--launcher", "local")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "local launcher runs one worker" in r.stderr and "--launcher ray" in r.stderr

"""A tracked run -> `gantry history` -> `gantry register --alias champion` -> `gantry sample models:/...`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]


def gantry(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_register_champion_and_sample_it(tmp_path):
    r = gantry("train", str(REPO / "configs/toy-ring.yaml"), "tracking.enabled=true", "train.kimg=64",
               "train.eval_kimg=32", "train.checkpoint_kimg=32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "mlruns.db").exists()  # the embedded default store, in the working directory
    r = gantry("history", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)
    assert len(runs) == 1 and runs[0]["name"] == "toy-ring" and runs[0]["status"] == "FINISHED"
    run_id = runs[0]["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    bare = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id  # logged no checkpoint
    r = gantry("register", bare, "--name", "ring", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == f"gantry: run {bare} has no checkpoint artifact 'checkpoints/latest'"
    r = gantry("register", run_id, "--name", "ring", "--alias", "champion", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "champion.npy"
    r = gantry("sample", "models:/ring@champion", "--n", "256", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.load(out).shape == (256, 2)
    r = gantry("sample", "models:/ring@nobody", "--n", "4", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1

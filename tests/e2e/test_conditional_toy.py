"""A class-conditional run on the 8-mode ring (label = mode): G learns to draw the mode it is
asked for, through a checkpoint and through the model registry; conditioning on data with a
single class is refused before any work."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.mixtures import mixture_centers


def gantry(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond")
    uri = f"sqlite:///{out}/mlruns.db"
    r = gantry("train", "configs/toy-ring.yaml", f"train.out_dir={out}", "train.kimg=192", "train.eval_kimg=192",
               "train.checkpoint_kimg=192", "model.conditional=true", "tracking.enabled=true", f"tracking.uri={uri}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, uri


def share_at_mode(points: np.ndarray, mode: int) -> float:
    nearest = torch.cdist(torch.tensor(points), mixture_centers("toy-ring", 8, 2.0)).argmin(1)
    return (nearest == mode).float().mean().item()


@pytest.mark.slow
def test_each_class_is_drawn_at_its_own_mode(trained, tmp_path):
    out, uri = trained
    ckpts = str(out / "toy-ring" / "checkpoints")
    r = gantry("sample", ckpts, "--per-class", "500", "--out", str(tmp_path / "all.npz"))
    assert r.returncode == 0, r.stderr
    arrays = np.load(tmp_path / "all.npz")
    assert arrays["labels"].tolist() == [k for k in range(8) for _ in range(500)]
    for k in range(8):
        assert share_at_mode(arrays["points"][arrays["labels"] == k], k) >= 0.95, k
    r = gantry("sample", ckpts, "--class", "2", "--n", "300", "--out", str(tmp_path / "two.npz"))
    assert r.returncode == 0, r.stderr
    assert share_at_mode(np.load(tmp_path / "two.npz")["points"], 2) >= 0.95

    # the same from the registry: the exported program takes (z, labels)
    r = gantry("register", _run_id(uri), "--name", "ring-cond", "--alias", "champion", "--uri", uri, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = gantry("sample", "models:/ring-cond@champion", "--class", "5", "--n", "300", "--uri", uri,
               "--out", str(tmp_path / "reg.npz"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert share_at_mode(np.load(tmp_path / "reg.npz")["points"], 5) >= 0.95


def _run_id(uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"] or client.search_experiments()
    [run] = client.search_runs([experiment.experiment_id])
    return run.info.run_id


def test_single_class_data_is_refused(tmp_path):
    folder = tmp_path / "pictures"  # images, no class sub-folders: one class
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(folder / f"{i}.png")
    shards = tmp_path / "shards"
    assert gantry("shards", "build", str(folder), str(shards), "--resolution", "32").returncode == 0
    r = gantry("train", "configs/mnist-dcgan.yaml", f"data.path={shards}", f"train.out_dir={tmp_path / 'runs'}",
               "model.conditional=true", "tracking.enabled=false")
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith(f"gantry: config error: model.conditional: {shards} has 1 class (") and \
        "two or more" in line, line
    assert not list((tmp_path / "runs").rglob("ckpt-*"))

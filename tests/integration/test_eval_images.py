"""`gantry eval` on an image model: a checkpoint and the same weights from the registry score alike."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.checkpoint import latest_checkpoint, read_meta
from ray_helpers import REPO, build_mnist, train_cmd


def gantry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_eval_checkpoint_and_registered_model(tmp_path):
    shards = build_mnist(tmp_path / "shards")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cmd = train_cmd(shards, tmp_path / "out", 2.048, 1.024, "tracking.enabled=true", f"tracking.uri={uri}")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = latest_checkpoint(tmp_path / "out" / "mnist-dcgan" / "checkpoints")
    metrics = ["eval.metrics=[fid,kid,pr,coverage]", "eval.classifier_steps=200", "eval.n_real=1024",
               "eval.kid_subsets=10", "eval.kid_subset_size=256", f"eval.cache_dir={tmp_path / 'cache'}"]

    r = gantry("eval", str(ckpt), *metrics, "--n", "512", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    from_ckpt = json.loads(r.stdout)
    assert set(from_ckpt) >= {"fid_classifier", "kid_classifier", "precision_classifier", "recall_classifier",
                              "classes_covered", "classes_total", "class_tv"}
    assert from_ckpt["classes_total"] == 10 and from_ckpt["fid_classifier"] > 0

    r = gantry("register", read_meta(ckpt)["tracking_run_id"], "--name", "digits", "--alias", "champion",
               "--uri", uri)
    assert r.returncode == 0, r.stderr[-3000:]
    r = gantry("eval", "models:/digits@champion", *metrics, "--n", "512", "--json", "--uri", uri)
    assert r.returncode == 0, r.stderr[-3000:]
    from_registry = json.loads(r.stdout)
    assert from_registry["classes_covered"] == from_ckpt["classes_covered"]
    assert from_registry["fid_classifier"] == pytest.approx(from_ckpt["fid_classifier"], rel=1e-3)

    r = gantry("eval", str(ckpt), "eval.features=vgg")
    assert r.returncode == 2 and "eval.features" in r.stderr and len(r.stderr.strip().splitlines()) == 1

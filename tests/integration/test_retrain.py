"""`gantry retrain` rounds against a real MLflow server: the first creates the champion, the
same data again does nothing, new data trains a warm-started challenger that is promoted or
rejected by the metric (decision tagged), and a second concurrent round finds the lock held.
Toy ring, a few kimg per training, so a round takes seconds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/toy-ring-retrain.yaml"
# The first champion trains 4 kimg (it covers no mode yet); a challenger 60 kimg more.
SHORT = ["train.kimg=4", "train.eval_kimg=20", "train.checkpoint_kimg=30", "train.log_every=10", "retrain.kimg=60",
         "retrain.min_improvement=0"]


def retrain_cmd(server, out_dir: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "retrain", CONFIG, *SHORT, f"name={name}", f"train.out_dir={out_dir}",
            f"tracking.uri={server.uri}", f"tracking.experiment={name}", *extra]


def retrain(server, out_dir: Path, name: str, *extra: str) -> str:
    r = subprocess.run(retrain_cmd(server, out_dir, name, *extra), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout


def versions(client, name: str) -> dict[str, object]:
    return {mv.version: client.get_model_version(name, mv.version) for mv in client.search_model_versions(f"name='{name}'")}


@pytest.mark.slow
def test_champion_then_nothing_then_promoted_then_rejected(mlflow_server, tmp_path):
    client, name = MlflowClient(mlflow_server.uri), "ring-cycle"

    out = retrain(mlflow_server, tmp_path, name)
    assert "first champion" in out
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1" and champion.tags["retrain_decision"] == "promoted"
    first_run = client.get_run(champion.run_id)
    assert first_run.data.tags["data_version"] == "toy-ring:modes=8,std=0.02,radius=2"

    assert "nothing to do" in retrain(mlflow_server, tmp_path, name)
    assert list(versions(client, name)) == ["1"]

    # New data (a wider ring): a challenger warm-starts from v1 and wins.
    out = retrain(mlflow_server, tmp_path, name, "data.std=0.03")
    assert "promoted" in out, out
    v = versions(client, name)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert v["2"].tags["retrain_decision"] == "promoted" and v["2"].tags["challenger_of"] == "1"
    assert float(v["2"].tags["challenger_score"]) > float(v["2"].tags["champion_score"])
    assert v["1"].tags["challenge_result"] == "dethroned" and v["1"].tags["challenged_by"] == "2"
    challenger = client.get_run(v["2"].run_id)
    assert challenger.data.tags["mlflow.parentRunId"] == champion.run_id
    assert challenger.data.tags["data_version"] == "toy-ring:modes=8,std=0.03,radius=2"
    assert challenger.data.params["data.std"] == "0.03"
    # Warm start: the challenger continued from the champion's 4 kimg to 64, not from zero.
    kimg = [m.value for m in client.get_metric_history(challenger.info.run_id, "kimg")]
    assert min(kimg) > first_run.data.metrics["kimg"] and max(kimg) == pytest.approx(64, abs=0.3)

    # Newer data again, but a bar no challenger can clear: rejected, v2 stays champion.
    bar = "retrain.min_improvement=1e9"
    out = retrain(mlflow_server, tmp_path, name, "data.std=0.04", bar)
    assert "rejected" in out, out
    v = versions(client, name)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert v["3"].tags["retrain_decision"] == "rejected" and v["3"].tags["challenger_of"] == "2"
    assert client.get_run(v["3"].run_id).data.tags["retrain_decision"] == "rejected"
    assert v["2"].tags["challenge_result"] == "defended" and v["2"].tags["challenged_by"] == "3"
    # That data was tried against this champion: the next scheduled round does nothing...
    assert "nothing to do" in retrain(mlflow_server, tmp_path, name, "data.std=0.04", bar)
    assert len(versions(client, name)) == 3


@pytest.mark.slow
def test_a_second_concurrent_round_finds_the_lock_held(mlflow_server, tmp_path):
    name = "ring-lock"
    first = subprocess.Popen(retrain_cmd(mlflow_server, tmp_path, name, "train.kimg=60"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline()  # printed once the lock is held, before any training
        assert "training from scratch" in line, line + first.stderr.read()[-3000:]
        second = subprocess.run(retrain_cmd(mlflow_server, tmp_path, name), cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 0
        assert f"another retrain holds {tmp_path / (name + '.retrain.lock')} (pid {first.pid})" in second.stderr, second.stderr
        assert "training" not in second.stdout
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert "first champion" in out
    assert list(versions(MlflowClient(mlflow_server.uri), name)) == ["1"]

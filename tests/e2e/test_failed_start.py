"""A run that fails while it is being built still ends its MLflow run: a corrupt resume
checkpoint gives one line, exit 1, and the run it resumed is FAILED, not left RUNNING."""
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from pipeline.checkpoint import latest_checkpoint, read_meta


def gantry(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True)


def test_corrupt_resume_checkpoint_fails_the_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    common = ["configs/toy-ring.yaml", f"train.out_dir={tmp_path}", f"tracking.uri={uri}", "tracking.enabled=true",
              "train.batch=64", "train.log_every=5", "train.eval_kimg=0.64", "train.checkpoint_kimg=0.64"]
    first = gantry("train", *common, "train.kimg=0.64")
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = Path(latest_checkpoint(tmp_path / "toy-ring" / "checkpoints"))
    run_id = read_meta(ckpt)["tracking_run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"

    weights = ckpt / "G.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short, as a full disk leaves it
    r = gantry("train", *common, "train.kimg=1.28", "--resume", "latest")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "cannot read checkpoint" in errors[0] and ckpt.name in errors[0], r.stderr

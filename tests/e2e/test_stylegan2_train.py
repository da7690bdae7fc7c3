"""`configs/stylegan2-32.yaml` trains end to end through `gantry train`, lazy R1 through both fused ops."""
import subprocess
import sys

import pytest
import torch

from pipeline.checkpoint import latest_checkpoint, load_checkpoint
from pipeline.shards import build_shards


@pytest.mark.slow
def test_stylegan2_32_trains_a_few_steps_with_lazy_r1(tmp_path):
    shards = tmp_path / "shards"
    build_shards("mnist", shards, 32, shard_size=64, pad=True, limit=128, workers=1)
    r = subprocess.run([sys.executable, "-m", "launch.cli", "train", "configs/stylegan2-32.yaml",
                        f"data.path={shards}", f"train.out_dir={tmp_path}", "train.batch=8", "train.kimg=0.04",
                        "loss.r1_interval=2", "train.log_every=1", "model.g_width=8", "model.d_width=8",
                        "model.w_dim=32", "model.z_dim=32", "tracking.enabled=false", "eval.metrics=[]",
                        "data.loader_workers=0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = latest_checkpoint(tmp_path / "stylegan2-32" / "checkpoints")
    weights, state, meta = load_checkpoint(ckpt)
    assert meta["step"] == 5  # 40 images / batch 8
    # D's Adam saw the R1 steps (steps 0, 2, 4): more D updates than G updates
    d_steps = {int(s["step"]) for s in state["strategy"]["optimizers"]["D"]["state"].values()}
    g_steps = {int(s["step"]) for s in state["strategy"]["optimizers"]["G"]["state"].values()}
    assert d_steps == {8} and g_steps == {5}
    assert all(torch.isfinite(v).all() for v in weights["G_ema"].values())
    assert (tmp_path / "stylegan2-32" / "samples").is_dir()

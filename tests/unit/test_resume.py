"""Exact resume: N steps straight == k steps, process exits, resume, N steps."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from models.ema import recalibrate_batchnorm
from pipeline.checkpoint import load_checkpoint, load_generator
from mnist_helpers import mnist_shards

BATCH = 64
N, K = 40, 16  # steps; R1 runs every 4 steps and EMA ramps up across the split


def _train(tmp_path, name, steps, *extra, config="configs/toy-ring.yaml"):
    kimg = steps * BATCH / 1000
    cmd = [sys.executable, "-m", "launch.cli", "train", config, f"name={name}",
           f"train.out_dir={tmp_path}", f"train.batch={BATCH}", f"train.kimg={kimg}",
           f"train.checkpoint_kimg={K * BATCH / 1000}", f"train.eval_kimg={K * BATCH / 1000}",
           "train.log_every=5", "tracking.enabled=false", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _final(tmp_path, name, step):
    return load_file(str(tmp_path / name / "checkpoints" / f"ckpt-{step:09d}" / "G_ema.safetensors"))


# rpgan with plain R1 + R2 in D's main step; γ, D's lr and both β2 ramped over the first 2 of 2.56 kimg
RAMPED = ["loss.kind=rpgan", "loss.r1_interval=1", "loss.r2_gamma=0.01", "loss.gamma_end=0.1", "d_optim.lr_end=1e-4",
          "g_optim.beta2_end=0.999", "d_optim.beta2_end=0.999", "train.ramp_kimg=2"]


@pytest.mark.parametrize("extra", [["loss.kind=logistic"], ["loss.kind=wgan-gp"],
                                   ["loss.kind=logistic", "model.conditional=true"], RAMPED],
                         ids=["logistic", "wgan-gp", "conditional", "rpgan-ramped"])
def test_resume_is_bit_exact(tmp_path, extra):
    _train(tmp_path, "straight", N, *extra)
    _train(tmp_path, "split", K, *extra)
    r = _train(tmp_path, "split", N, *extra, "--resume", "latest")
    assert "resumed from" in r.stdout
    a, b = _final(tmp_path, "straight", N), _final(tmp_path, "split", N)
    assert a.keys() == b.keys()
    assert ("embed.table.weight" in a) == ("model.conditional=true" in extra)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training really moved the weights between the split and the end (the run keeps its
    # checkpoints at K, 2K and N, so the one at the split is still there)
    mid = _final(tmp_path, "split", K)
    assert any(not torch.equal(mid[k], b[k]) for k in b)
    if extra is RAMPED:   # D's Adam went from the config's lr 1e-3, β2 0.99 to the end values
        groups = [load_checkpoint(str(tmp_path / "split" / "checkpoints" / f"ckpt-{s:09d}"))[1]["strategy"]
                  ["optimizers"]["D"]["param_groups"][0] for s in (K, N)]
        assert 0.99 < groups[0]["betas"][1] < 0.999 and groups[1]["betas"][1] == pytest.approx(0.999)
        assert 1e-4 < groups[0]["lr"] < 1e-3 and groups[1]["lr"] == pytest.approx(1e-4)


def test_resume_is_bit_exact_with_recalibrated_batchnorm(tmp_path):
    """DCGAN's G has batch norm: with train.ema_bn_latents each save holds G_ema's own statistics
    (not the live G's), and the EMA update after a resume copies G's back exactly as it would
    have without the stop."""
    extra = [f"data.path={mnist_shards()}", "model.g_width=8", "model.d_width=8", "train.ema_bn_latents=1024",
             "train.ema_rampup=null", "eval.metrics=[]", "health.enabled=false"]  # G_ema lags G: far apart
    _train(tmp_path, "straight", N, *extra, config="configs/mnist-dcgan.yaml")
    _train(tmp_path, "split", K, *extra, config="configs/mnist-dcgan.yaml")
    _train(tmp_path, "split", N, *extra, "--resume", "latest", config="configs/mnist-dcgan.yaml")
    a, b = _final(tmp_path, "straight", N), _final(tmp_path, "split", N)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = tmp_path / "split" / "checkpoints" / f"ckpt-{N:09d}"
    live = load_file(str(ckpt / "G.safetensors"))
    G_ema = load_generator(str(ckpt))[0]
    stats = [k for k in live if k.endswith(("running_mean", "running_var"))]
    own = {k: G_ema.state_dict()[k].clone() for k in stats}
    # the same statistics again from other latents: close to the saved ones, unlike G's
    recalibrate_batchnorm(G_ema, [(torch.randn(512, 64, generator=torch.Generator().manual_seed(s)),)
                                  for s in range(8)])
    again = G_ema.state_dict()

    def distance(x):
        return sum(float((x[k] - own[k]).square().sum()) for k in stats) ** 0.5
    assert distance(again) < 0.2 * distance(live)

"""pix2pix from the CLI on real mnist-edges pairs: it learns, resumes bit-exactly, and
`gantry translate` runs a checkpoint or a registered model on folders and shards."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.metrics.image_eval import read_pairs
from pipeline.shards import build_shards, load_manifest
from pipeline.visuals import png_bytes, to_uint8

BATCH, K, N = 32, 20, 40   # steps: the split run stops at K, both end at N


def gantry(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True)


def _train(out, shards, name, steps, *extra):
    r = gantry("train", "configs/mnist-edges-pix2pix.yaml", f"name={name}", f"data.path={shards}",
               f"train.out_dir={out}", f"train.batch={BATCH}", f"train.kimg={steps * BATCH / 1000}",
               f"train.eval_kimg={K * BATCH / 1000}", f"train.checkpoint_kimg={K * BATCH / 1000}",
               "eval.n_fake=300", "eval.classifier_steps=100", "train.log_every=10", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p2p")
    shards = tmp / "edges"
    build_shards("mnist-edges", shards, 32, pad=True, limit=2000, shard_size=500, pairs=True, workers=1)
    uri = f"sqlite:///{tmp}/mlflow.db"
    _train(tmp, shards, "straight", N, f"tracking.uri={uri}")
    _train(tmp, shards, "split", K, "tracking.enabled=false")
    resumed = _train(tmp, shards, "split", N, "tracking.enabled=false", "--resume", "latest")
    assert "resumed from" in resumed.stdout
    return tmp, shards, uri


def _ckpt(tmp, name, step):
    return tmp / name / "checkpoints" / f"ckpt-{step:09d}"


@pytest.mark.slow
def test_pix2pix_learns_edges_to_digits_and_resumes_bit_exact(runs):
    tmp, _, _ = runs
    first, last = (json.loads((_ckpt(tmp, "straight", s) / "meta.json").read_text())["eval"] for s in (K, N))
    assert last["l1"] < first["l1"] and last["psnr"] > first["psnr"] and last["fid"] < first["fid"]
    for weights in ("G_ema", "D"):
        a, b = (load_file(str(_ckpt(tmp, name, N) / f"{weights}.safetensors")) for name in ("straight", "split"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    mid, end = (load_file(str(_ckpt(tmp, "split", s) / "G_ema.safetensors")) for s in (K, N))
    assert any(not torch.equal(mid[k], end[k]) for k in end)   # and training moved the weights after the split


@pytest.mark.slow
def test_translate_a_folder_the_shards_and_a_registered_model(runs, tmp_path):
    tmp, shards, uri = runs
    a, _, _ = read_pairs(load_manifest(shards), 100, seed=1)
    edges = tmp_path / "edges"
    (edges / "nested").mkdir(parents=True)
    for i, img in enumerate(to_uint8(a)):
        (edges / ("nested" if i % 2 else "") / f"{i:03d}.png").write_bytes(png_bytes(img))
    ckpts = tmp / "straight" / "checkpoints"
    r = gantry("translate", str(ckpts), str(edges), str(tmp_path / "out"))
    assert r.returncode == 0 and r.stdout.strip() == f"translated 100 images into {tmp_path / 'out'}", r.stderr
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    assert written == sorted(p.relative_to(edges) for p in edges.rglob("*.png"))
    assert Image.open(tmp_path / "out" / "nested" / "001.png").size == (32, 32)

    r = gantry("translate", str(ckpts), str(shards), str(tmp_path / "from-shards"))
    assert r.returncode == 0 and len(list((tmp_path / "from-shards").glob("*.png"))) == 2000, r.stderr

    run_id = json.loads((_ckpt(tmp, "straight", N) / "meta.json").read_text())["tracking_run_id"]
    r = gantry("register", run_id, "--name", "edges", "--alias", "champion", "--uri", uri)
    assert r.returncode == 0, r.stderr[-2000:]
    r = gantry("translate", "models:/edges@champion", str(edges / "000.png"), str(tmp_path / "one.png"), "--uri", uri)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "out" / "000.png")))


@pytest.mark.slow
def test_translate_bad_input_is_one_line(runs, tmp_path):
    tmp, shards, _ = runs
    toy = gantry("train", "configs/toy-ring.yaml", f"train.out_dir={tmp_path}", "train.kimg=0.2",
                 "tracking.enabled=false")
    assert toy.returncode == 0, toy.stderr[-2000:]
    ckpts = str(tmp / "straight" / "checkpoints")
    for args, code, says in (
            ([str(tmp_path / "toy-ring" / "checkpoints"), str(shards)], 2, "is not a translation model"),
            ([ckpts, str(tmp_path / "missing")], 2, "no such file or folder"),
            ([ckpts, str(tmp_path / "toy-ring" / "checkpoints")], 2, "the folder holds no images"),
            ([str(tmp_path / "nothing"), str(shards)], 1, "checkpoint not found")):
        r = gantry("translate", *args, str(tmp_path / "out"))
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert says in r.stderr
    assert not (tmp_path / "out").exists()

"""A conditional image model's samples as files another tool can read. `gantry sample`: a grid
with one row per class, an .npz of uint8 images and labels, a folder per class name that `gantry
shards build` reads back as labelled data. `gantry export`: labelled shards that verify and
train, with their provenance, never a manifest claiming shards an interrupted export did not
write. Bad input to either: one line, nothing overwritten."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import checkpoint
from pipeline.config import from_dict
from pipeline.worker import build_networks

NAMES = ["cat", "dog", "owl"]


def gantry(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A conditional DCGAN checkpoint (untrained: the files' layout is under test, not the art)."""
    cfg = from_dict({"name": "cond", "model": {"arch": "dcgan", "z_dim": 8, "g_width": 4, "d_width": 4,
                                               "conditional": True, "classes": len(NAMES)},
                     "data": {"source": "shards", "path": "shards/"}})
    G, D = build_networks(cfg, channels=1)
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    checkpoint.save_checkpoint(str(root), 1, {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G.state_dict()},
                               {}, {"step": 1, "channels": 1, "config": cfg.model_dump(mode="json"),
                                    "class_names": NAMES})
    return str(root)


def test_grid_npz_and_class_folders(source, tmp_path):
    r = gantry("sample", source, "--per-class", "5", "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size == (5 * 32, 3 * 32)  # a row per class, 5 columns

    r = gantry("sample", source, "--class", "2", "--n", "6", "--out", str(tmp_path / "owls.npz"))
    assert r.returncode == 0, r.stderr
    arrays = np.load(tmp_path / "owls.npz")
    assert arrays["images"].shape == (6, 32, 32, 1) and arrays["images"].dtype == np.uint8
    assert arrays["labels"].tolist() == [2] * 6

    r = gantry("sample", source, "--n", "7", "--out", str(tmp_path / "folders") + "/")
    assert r.returncode == 0, r.stderr
    found = {p.parent.name: [] for p in (tmp_path / "folders").rglob("*.png")}
    for p in sorted((tmp_path / "folders").rglob("*.png")):
        found[p.parent.name].append(p.name)
    # the classes in turn: 0, 1, 2, 0, 1, 2, 0
    assert found == {"cat": ["000000.png", "000003.png", "000006.png"], "dog": ["000001.png", "000004.png"],
                     "owl": ["000002.png", "000005.png"]}
    r = gantry("shards", "build", str(tmp_path / "folders"), str(tmp_path / "shards"), "--resolution", "32")
    assert r.returncode == 0, r.stderr
    manifest = (tmp_path / "shards" / "manifest.json").read_text()
    assert all(f'"{name}"' in manifest for name in NAMES)


@pytest.mark.parametrize("args,message", [
    (["--class", "3"], "--class 3: {src} draws classes 0..2 (cat, dog, owl)"),
    (["--class", "-1"], "--class -1: {src} draws classes 0..2 (cat, dog, owl)"),
    (["--class", "1", "--per-class", "2"], "--class and --per-class: give one of them"),
    (["--per-class", "0"], "--per-class must be positive"),
])
def test_bad_input_is_one_line_and_writes_nothing(source, tmp_path, args, message):
    out = tmp_path / "x.npz"
    r = gantry("sample", source, *args, "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"gantry: config error: {message.format(src=source)}"]
    assert not out.exists()


def test_export_verifies_and_trains(source, tmp_path):
    out = tmp_path / "synthetic"
    r = gantry("export", source, str(out), "--n", "40", "--per-class", "--shard-size", "32", "--truncation", "0.7",
               "--seed", "5")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 120 and len(m["shards"]) == 4
    assert m["classes"] == {"0": "cat", "1": "dog", "2": "owl"}
    assert m["sources"][0]["provenance"] == {"model": f"{source}/ckpt-000000001", "run_id": None, "seed": 5,
                                             "truncation": 0.7, "per_class": {"cat": 40, "dog": 40, "owl": 40}}
    r = gantry("shards", "verify", str(out))
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
    # the same seed gives the same shards
    again = tmp_path / "again"
    assert gantry("export", source, str(again), "--n", "40", "--per-class", "--shard-size", "32", "--truncation",
                  "0.7", "--seed", "5").returncode == 0
    assert [(p.name, p.read_bytes()) for p in sorted(out.glob("*.tar"))] == \
        [(p.name, p.read_bytes()) for p in sorted(again.glob("*.tar"))]

    r = gantry("train", "configs/mnist-dcgan.yaml", f"data.path={out}", f"train.out_dir={tmp_path / 'runs'}",
               "model.conditional=true", "train.batch=16", "train.kimg=0.064", "train.checkpoint_kimg=0.064",
               "train.eval_kimg=1000", "model.g_width=8", "model.d_width=8", "tracking.enabled=false",
               "eval.metrics=[]")  # the metrics would train a classifier on the 120 images: ~50 s
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads(next((tmp_path / "runs").rglob("meta.json")).read_text())
    assert meta["step"] == 4 and meta["config"]["model"]["classes"] == 3 and meta["class_names"] == NAMES


def test_export_refuses_a_non_empty_out_and_force_replaces(source, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = gantry("export", source, str(out), "--n", "6")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"gantry: config error: {out} is not empty; pass --force to replace the "
                                     f"shards there"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert gantry("export", source, str(out), "--n", "6", "--force").returncode == 0
    assert gantry("export", source, str(out), "--n", "3", "--force").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["cond-000000.tar", "manifest.json", "notes.txt"]
    assert json.loads((out / "manifest.json").read_text())["samples"] == 3


def test_export_killed_midway_leaves_no_manifest(source, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "export", source, str(out), "--n", "200000",
                             "--shard-size", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob(".staging-*/*.tar"))) < 2:  # shards written, the export far from done
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    r = gantry("shards", "verify", str(out))
    assert r.returncode == 1 and "no shard manifest" in r.stdout + r.stderr
    # what the killed export left is no reason to refuse the next one
    assert gantry("export", source, str(out), "--n", "4").returncode == 0

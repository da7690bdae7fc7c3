"""`gantry sample` of a conditional image model, as files another tool can read: a grid with
one row per class, an .npz of uint8 images and labels, a folder per class name that `gantry
shards build` reads back as labelled data; and its bad input as one-line errors."""
from __future__ import annotations

import subprocess
import sys

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

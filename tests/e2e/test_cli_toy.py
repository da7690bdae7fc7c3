"""The CLI as a user types it, on the 2-D ring: train, eval, sample, resume, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest


def gantry(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # The benchmark's run (seed 1) for half its length, evaluated every 96 kimg: evaluation draws
    # no training randomness, and the config ramps nothing, so these are its first 768 kimg.
    r = gantry("train", "configs/toy-ring.yaml", f"train.out_dir={out}", "train.kimg=768", "train.eval_kimg=96")
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [line for line in r.stdout.splitlines() if line.startswith("gantry: eval at kimg ")]
    return out / "toy-ring" / "checkpoints", evals


@pytest.mark.slow
def test_ring_learns_all_modes_and_quality_improves(trained):
    ckpts, evals = trained
    r = gantry("eval", str(ckpts), "--json")
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert scores["modes_covered"] == 8
    hq = [float(line.split("hq_pct ")[1].split(",")[0]) for line in evals]
    assert len(hq) == 8 and hq[-1] > hq[0] + 20 and scores["hq_pct"] > 85


@pytest.mark.slow
def test_sample_writes_points_near_the_ring(trained, tmp_path):
    ckpts, _ = trained
    out = tmp_path / "ring.npy"
    r = gantry("sample", str(ckpts), "--n", "500", "--out", str(out))
    assert r.returncode == 0, r.stderr
    pts = np.load(out)
    assert pts.shape == (500, 2)
    assert np.median(np.abs(np.linalg.norm(pts, axis=1) - 2.0)) < 0.2  # the ring has radius 2


@pytest.mark.slow
def test_sample_and_eval_bad_input_are_one_line_errors(trained, tmp_path):
    ckpts, _ = trained
    for args, code in ((["sample", str(ckpts), "--out", str(tmp_path / "x.png")], 2),  # usage: points, not images
                       (["sample", str(ckpts), "--class", "1", "--out", str(tmp_path / "x.npy")], 2),
                       (["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npy")], 1),
                       (["eval", str(tmp_path)], 1)):
        r = gantry(*args)
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("gantry: ")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.npy").exists()

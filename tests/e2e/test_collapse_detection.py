"""Mode collapse on real MNIST is flagged against the real data's diversity; the shipped config's
run is not. Both runs are configs/mnist-dcgan.yaml's first 20 kimg (two evaluations, pixel
diversity: the classifier's feature rule needs a trained classifier and adds nothing here)."""
import os
import re
import subprocess
import sys

import pytest

from tests.unit.mnist_helpers import mnist_shards

pytestmark = pytest.mark.slow

EVENT = re.compile(r"^gantry: health (?:warn|stop|rollback): .*$", re.M)


def train(tmp_path, name, *overrides) -> subprocess.Popen:
    """Both runs at once, a core each: faster on two cores than one after the other."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", "configs/mnist-dcgan.yaml", f"name={name}",
         f"data.path={mnist_shards()}", f"train.out_dir={tmp_path}", "tracking.enabled=false",
         "train.kimg=20", "eval.metrics=[]", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_collapsed_generator_is_flagged_and_the_shipped_run_is_not(tmp_path):
    runs = {"shipped": train(tmp_path, "shipped"),
            # G's learning rate x100: one identical image for every latent from the first evaluation on.
            "collapsed": train(tmp_path, "collapsed", "g_optim.lr=0.05", "health.policy=stop")}
    try:
        (out, err), (c_out, c_err) = (p.communicate(timeout=600) for p in runs.values())
    finally:
        for p in runs.values():
            p.kill()
    assert runs["shipped"].returncode == 0, err[-2000:]
    assert not EVENT.findall(out), out[-2000:]

    events = EVENT.findall(c_out)
    assert len(events) == 1, c_out[-2000:]
    assert "mode_collapse" in events[0] and "(pixels) is below 0.3 x the real data's" in events[0], events[0]
    assert "in 2 readings in a row" in events[0]
    assert runs["collapsed"].returncode == 1, c_err[-2000:]

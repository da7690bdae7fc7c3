"""Mode collapse on real MNIST is flagged against the real data's diversity; the shipped configs'
runs are not. Every run is a config's first 12 kimg, evaluated every 6 (pixel diversity: the
classifier's feature rule needs a trained classifier and adds nothing here); the collapsed one is
configs/mnist-dcgan.yaml with G's learning rate x100."""
import os
import re
import subprocess
import sys

import pytest

from tests.unit.mnist_helpers import mnist_shards

pytestmark = pytest.mark.slow

EVENT = re.compile(r"^gantry: health (?:warn|stop|rollback): .*$", re.M)


def train(tmp_path, config, name, *overrides) -> subprocess.Popen:
    """All runs at once, a thread each: faster on two cores than one after the other."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", f"configs/{config}.yaml", f"name={name}",
         f"data.path={mnist_shards()}", f"train.out_dir={tmp_path}", "tracking.enabled=false",
         "train.kimg=12", "train.eval_kimg=6", "eval.metrics=[]", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


SHIPPED = ("mnist-dcgan", "mnist-15min")


def test_a_collapsed_generator_is_flagged_and_the_shipped_runs_are_not(tmp_path):
    runs = {name: train(tmp_path, name, name) for name in SHIPPED}
    # G's learning rate x100: one identical image for every latent from the first evaluation on.
    runs["collapsed"] = train(tmp_path, "mnist-dcgan", "collapsed", "g_optim.lr=0.05", "health.policy=stop")
    try:
        outputs = {name: p.communicate(timeout=600) for name, p in runs.items()}
    finally:
        for p in runs.values():
            p.kill()
    for name in SHIPPED:
        out, err = outputs[name]
        assert runs[name].returncode == 0, f"{name}: {err[-2000:]}"
        assert not EVENT.findall(out), f"{name}: {out[-2000:]}"

    c_out, c_err = outputs["collapsed"]
    events = EVENT.findall(c_out)
    assert len(events) == 1, c_out[-2000:]
    assert "mode_collapse" in events[0] and "(pixels) is below 0.3 x the real data's" in events[0], events[0]
    assert "in 2 readings in a row" in events[0]
    assert runs["collapsed"].returncode == 1, c_err[-2000:]

"""SWEEP.yaml (launch/sweeps/spec.py): a good file gives every trial's base config; each kind of
mistake is a ConfigError naming the file and the key, and on the CLI one line and exit 2 before
anything is written or any trial starts."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from launch.sweeps.spec import load_sweep
from pipeline.config import ConfigError, load_config
from pipeline.evaluation import metric_names
from pipeline.metrics.mixture import mixture_scores

GOOD = """
name: lr
metric: hq_pct
mode: max
space:
  g_optim.lr: {grid: [0.0003, 0.001]}
  loss.r1_gamma: {loguniform: [0.001, 0.1]}
budget: {kimg: 96, report_kimg: 32, trials: 2, concurrent: 2}
"""


@pytest.fixture
def sweep_file(tmp_path):
    def write(text: str):
        p = tmp_path / "sweep.yaml"
        p.write_text(text)
        return p
    return write


def test_a_good_sweep_sets_every_trials_budget(sweep_file):
    spec, base = load_sweep(sweep_file(GOOD), load_config("configs/toy-ring.yaml"))
    assert spec.scheduler.kind == "grid" and spec.space["loss.r1_gamma"].kind == "loguniform"
    assert (base.train.kimg, base.train.eval_kimg, base.train.checkpoint_kimg) == (96, 32, 32)
    assert base.tracking.enabled  # the sweep's parent run gathers its trials
    assert base.g_optim.lr == load_config("configs/toy-ring.yaml").g_optim.lr  # the space is the trials'


def test_toy_metric_names_are_what_the_evaluation_reports():
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    assert set(mixture_scores(torch.randn(100, 2), centers, 0.02)) == metric_names(load_config("configs/toy-ring.yaml"))


BAD = [
    (GOOD.replace("g_optim.lr:", "g_optim.lrate:"), "space key 'g_optim.lrate'"),
    (GOOD.replace("[0.0003, 0.001]", "[]"), "space.g_optim.lr"),
    (GOOD.replace("[0.001, 0.1]", "[0.1, 0.1]"), "low < high"),
    (GOOD.replace("[0.0003, 0.001]", "[0.0003, -1]"), "space key 'g_optim.lr'"),
    (GOOD.replace("metric: hq_pct", "metric: fid"), "metric 'fid' is not reported"),
    (GOOD.replace("mode: max", "mode: up"), "mode"),
    (GOOD + "scheduler: {kind: pbt}\n", "pbt explores"),
    (GOOD + "scheduler: {kind: hyperband}\n", "scheduler.kind"),
    (GOOD.replace("budget: {", "budget: {gpus: 1, "), "budget.gpus"),
    ("name: x\nmetric: hq_pct\nmode: max\nspace: {}\n", "space is empty"),
]


@pytest.mark.parametrize("text,named", BAD, ids=[named for _, named in BAD])
def test_mistakes_name_the_file_and_key(sweep_file, text, named):
    p = sweep_file(text)
    with pytest.raises(ConfigError) as e:
        load_sweep(p, load_config("configs/toy-ring.yaml"))
    assert str(p) in str(e.value) and named in str(e.value), str(e.value)


def test_cli_exit_2_one_line_before_any_trial(sweep_file, tmp_path):
    out = tmp_path / "runs"
    for text in (BAD[0][0], BAD[4][0]):
        r = subprocess.run([sys.executable, "-m", "launch.cli", "sweep", "configs/toy-ring.yaml", str(sweep_file(text)),
                            f"train.out_dir={out}"], capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "sweep.yaml" in lines[0], r.stderr
        assert not out.exists() and "ray" not in r.stdout.lower()


@pytest.mark.parametrize("sweep,config", [("configs/sweeps/toy-ring-lr.yaml", "configs/toy-ring.yaml"),
                                          ("configs/sweeps/mnist-pbt.yaml", "configs/mnist-dcgan.yaml")])
def test_the_shipped_sweeps_load_against_their_configs(sweep, config):
    spec, base = load_sweep(sweep, load_config(config))
    assert base.train.kimg == spec.budget.kimg and base.train.checkpoint_kimg == base.train.eval_kimg <= spec.budget.kimg

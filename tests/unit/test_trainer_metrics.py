"""What the trainer logs: skipped steps (ranks skip together, so the count is the count) and
img/s (the training rate, which evals and saves do not dilute)."""
import time

import torch

from pipeline.config import from_dict
from pipeline.strategy.single import SingleStrategy
from pipeline.tracking import Tracker
from tests.unit.trainer_helpers import toy_trainer


class _AgreeingRanks(SingleStrategy):
    """Two ranks whose every value agrees (as they do for skip decisions), seen from one of
    them: a mean over ranks is this rank's value."""
    world_size = 2


class _NaNPoints:
    channels = 2

    def __next__(self):
        return torch.full((8, 2), float("nan")), torch.zeros(8, dtype=torch.int64)


def test_skipped_steps_are_counted_once_whatever_the_world_size(tmp_path):
    cfg = from_dict({"model": {"arch": "mlp", "z_dim": 4, "g_width": 8, "d_width": 8, "depth": 1},
                     "train": {"batch": 16, "precision": "fp32"}, "tracking": {"enabled": False}})
    strategy = _AgreeingRanks(torch.device("cpu"))
    trainer = toy_trainer(cfg, _NaNPoints(), tmp_path, strategy)
    for _ in range(3):
        trainer.train_step()
    metrics = trainer.stats.read(strategy.all_reduce_mean)
    assert metrics["D_main/skipped"] == 3  # NaN reals: every D step skipped, 3 steps
    assert metrics["G_main/skipped"] == 0
    assert metrics["skipped_share"] == 0.5


class _Points:
    channels = 2

    def __next__(self):
        return torch.randn(16, 2), torch.zeros(16, dtype=torch.int64)

    def state_dict(self):  # the final checkpoint records the stream's position
        return {}


class _Rates(Tracker):
    def __init__(self):
        self.rates = []

    def log_metrics(self, metrics, step):
        self.rates.append(metrics["img_per_s"])


def test_img_per_s_after_an_eval_is_the_training_rate(tmp_path):
    """An eval that takes a second every 4 steps: every window of one step still reads at
    the rate a millisecond step runs at (with the eval inside, a window is over a second)."""
    cfg = from_dict({"model": {"arch": "mlp", "z_dim": 4, "g_width": 8, "d_width": 8, "depth": 1},
                     "train": {"batch": 16, "precision": "fp32", "kimg": 0.16, "log_every": 1,
                               "eval_kimg": 0.064, "checkpoint_kimg": 1},
                     "tracking": {"enabled": False}})
    evals = []

    def slow_evaluation(G, step, tracker):
        evals.append(step)
        time.sleep(1.0)
        return {}

    tracker = _Rates()
    trainer = toy_trainer(cfg, _Points(), tmp_path, evaluation=slow_evaluation, tracker=tracker)
    trainer.train()
    assert len(evals) == 3 and len(tracker.rates) == 10  # evals at steps 4, 8 and the last, 10
    assert min(tracker.rates) > 16 / 0.5, tracker.rates

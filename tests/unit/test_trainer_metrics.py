"""What the trainer logs about skipped steps: ranks skip together, so the count is the count."""
import torch

from models.augment import Augment
from pipeline.config import from_dict
from pipeline.evaluation import no_evaluation
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.strategy.single import SingleStrategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer
from pipeline.worker import make_networks


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
    precision = choose_precision(cfg.train, strategy.device, image_model=False)
    G_ema = make_networks(cfg, strategy, precision, channels=2)
    augment = Augment()
    phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)
    trainer = Trainer(cfg, strategy, G_ema, phases, _NaNPoints(), precision, augment, Tracker(), no_evaluation,
                      None, tmp_path, channels=2)
    for _ in range(3):
        trainer.train_step()
    metrics = trainer.stats.read(strategy.all_reduce_mean)
    assert metrics["D_main/skipped"] == 3  # NaN reals: every D step skipped, 3 steps
    assert metrics["G_main/skipped"] == 0
    assert metrics["skipped_share"] == 0.5

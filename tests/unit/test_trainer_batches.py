"""The batches a training step draws: an epoch's short last batch reaches every phase of that
step, G's included (rpgan pairs each fake with a real, so the sizes must agree)."""
import torch

from models.augment import Augment
from pipeline.config import from_dict
from pipeline.evaluation import no_evaluation
from pipeline.health import Probe
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.strategy.single import SingleStrategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer
from pipeline.worker import make_networks


class _Epochs:
    """Epochs of 40 points in batches of 16: 16, 16, 8, 16, 16, 8, ..."""
    channels = 2

    def __init__(self):
        self.sizes = iter([16, 16, 8] * 10)

    def __next__(self):
        n = next(self.sizes)
        return torch.randn(n, 2), torch.zeros(n, dtype=torch.int64)


def test_an_epochs_short_batch_pairs_with_as_many_fakes_in_gs_rpgan_step(tmp_path):
    cfg = from_dict({"model": {"arch": "mlp", "z_dim": 4, "g_width": 8, "d_width": 8, "depth": 1},
                     "loss": {"kind": "rpgan", "r1_gamma": 0.1, "r2_gamma": 0.1, "r1_interval": 1},
                     "train": {"batch": 16, "precision": "fp32"}, "tracking": {"enabled": False}})
    strategy = SingleStrategy(torch.device("cpu"))
    precision = choose_precision(cfg.train, strategy.device, image_model=False)
    G_ema = make_networks(cfg, strategy, precision, channels=2)
    augment = Augment()
    phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)
    seen = []
    for phase in phases:
        def spy(G, D, batch, loss=phase.loss, name=phase.name):
            seen.append((name, len(batch.real), len(batch.z)))
            return loss(G, D, batch)
        phase.loss = spy
    trainer = Trainer(cfg, strategy, G_ema, phases, _Epochs(), precision, augment, Tracker(), no_evaluation,
                      None, Probe(()), tmp_path, channels=2)
    for _ in range(4):
        trainer.train_step()
    assert seen == [(name, n, n) for n in (16, 16, 8, 16) for name in ("D_main", "G_main")]

"""The batches a training step draws: an epoch's short last batch reaches every phase of that
step, G's included (rpgan pairs each fake with a real, so the sizes must agree)."""
import torch

from pipeline.config import from_dict
from tests.unit.trainer_helpers import toy_trainer


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
    trainer = toy_trainer(cfg, _Epochs(), tmp_path)
    seen = []
    for phase in trainer.phases:
        def spy(G, D, batch, loss=phase.loss, name=phase.name):
            seen.append((name, len(batch.real), len(batch.z)))
            return loss(G, D, batch)
        phase.loss = spy
    for _ in range(4):
        trainer.train_step()
    assert seen == [(name, n, n) for n in (16, 16, 8, 16) for name in ("D_main", "G_main")]

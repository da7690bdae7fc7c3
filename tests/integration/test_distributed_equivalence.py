"""Data parallel == big batch: one training step (D main, D R1, G main) of 2 workers x batch B
gives the same G and D, and the same Adam moments, as 1 worker x batch 2B.

Real gloo process groups (two processes from torch.multiprocessing), fp32 on CPU, the mlp pair
(no batch norm, whose per-rank statistics would differ by design), unconditional and
class-conditional. Both runs see the same real batch, labels and latents by construction: rank r
takes rows [rB, (r+1)B) of one fixed batch.
Adam's first update is invariant to the gradient's scale, so the test also compares Adam's
first moment (exp_avg = (1 - beta1) * grad), which is not: a sum instead of a mean would fail.
Then a NaN loss must be reported as a non-finite norm and skipped on both ranks.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from models.augment import Augment
from pipeline.config import from_dict
from pipeline.evaluation import no_evaluation
from pipeline.health import Probe
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer
from pipeline.worker import make_networks
from servers import free_port

B = 8  # per-worker batch
Z_DIM = 8
CLASSES = 4  # of the conditional runs


def _cfg(workers: int, kind: str, stage: int = 0, conditional: bool = False):
    return from_dict({
        "seed": 3, "workers": workers,
        "model": {"arch": "mlp", "z_dim": Z_DIM, "g_width": 32, "d_width": 32, "depth": 2,
                  "conditional": conditional, "classes": CLASSES if conditional else 0},
        "loss": {"kind": "logistic", "r1_gamma": 1.0, "r1_interval": 4},
        "train": {"batch": 2 * B, "precision": "fp32"},
        "strategy": {"kind": kind, "zero_stage": stage},
        "tracking": {"enabled": False},
    })


class _FixedBatch:
    """This rank's rows of one fixed real batch of 2B labelled points, every time."""

    channels = 2

    def __init__(self, rank: int, world_size: int):
        gen = torch.Generator().manual_seed(7)
        real, labels = torch.randn(2 * B, 2, generator=gen), torch.randint(CLASSES, (2 * B,), generator=gen)
        n = 2 * B // world_size
        self.real, self.labels = real[rank * n:(rank + 1) * n], labels[rank * n:(rank + 1) * n]

    def __next__(self):
        return self.real, self.labels


class _FixedLatents(Trainer):
    """Draw k of the run takes this rank's rows of fixed latents #k (2B rows) and their classes."""

    def _latents(self, n):
        self._draws = getattr(self, "_draws", 0) + 1
        gen = torch.Generator().manual_seed(100 + self._draws)
        z, c = torch.randn(2 * B, Z_DIM, generator=gen), torch.randint(CLASSES, (2 * B,), generator=gen)
        r = self.strategy.rank
        return z[r * n:(r + 1) * n], c[r * n:(r + 1) * n] if self.cfg.model.conditional else None


def _first_moments(strategy, name: str) -> torch.Tensor:
    """Adam's exp_avg of network `name`, flattened in parameter order (ZeRO: its partitions
    of every rank joined, padding included at the end)."""
    sd = strategy.state_dict()
    if "ranks" in sd:  # deepspeed: partitions by rank at stage >= 1, replicas at stage 0
        bases = [r[name]["base"] for r in sd["ranks"]]
        bases = bases if strategy.zero_stage else bases[:1]
    else:
        bases = [sd["optimizers"][name]]
    return torch.cat([b["state"][i]["exp_avg"].flatten() for b in bases for i in sorted(b["state"])])


def _one_step(cfg, strategy, tmp) -> dict:
    stream = _FixedBatch(strategy.rank, strategy.world_size)
    precision = choose_precision(cfg.train, strategy.device, image_model=False)
    G_ema = make_networks(cfg, strategy, precision, channels=2)
    augment = Augment()
    phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)
    trainer = _FixedLatents(cfg, strategy, G_ema, phases, stream, precision, augment, Tracker(), no_evaluation,
                            None, Probe(()), tmp, channels=2)
    trainer.train_step()
    out = {f"{n}.{k}": v.detach().clone() for n in ("G", "D") for k, v in strategy.module(n).state_dict().items()}
    out.update({f"{n}.exp_avg": _first_moments(strategy, n) for n in ("G", "D")})
    return out


def _nan_step_is_skipped(strategy) -> bool:
    """A non-finite gradient: the strategy reports it and leaves D's weights alone, on every rank."""
    D = strategy.module("D").requires_grad_(True)
    before = [p.detach().clone() for p in D.parameters()]
    loss = D(torch.randn(4, 2)).mean() * float("nan")
    strategy.backward("D", loss)
    norm = strategy.step("D")
    return not torch.isfinite(norm) and all(torch.equal(a, p) for a, p in zip(before, D.parameters()))


def _worker(rank: int, world_size: int, port: int, kind: str, stage: int, conditional: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pipeline.worker import make_strategy

    cfg = _cfg(world_size, kind, stage, conditional)
    strategy = make_strategy(cfg)
    result = _one_step(cfg, strategy, out + ".run")
    skipped = strategy.all_gather_object(_nan_step_is_skipped(strategy))
    result["nan_step_skipped"] = torch.tensor(all(skipped))
    if rank == 0:
        torch.save(result, out)
    strategy.shutdown()


@pytest.mark.slow
# ddp and ZeRO-2 run the class-conditional pair (its label terms ride the same all-reduce and
# partitions), ZeRO-0 the unconditional one: one spawn each, as the suite's time allows.
@pytest.mark.parametrize("kind,stage,conditional", [("ddp", 0, True), ("deepspeed", 0, False), ("deepspeed", 2, True)])
def test_two_workers_equal_one_worker_with_twice_the_batch(tmp_path, kind, stage, conditional):
    from pipeline.strategy.single import SingleStrategy

    torch.set_num_threads(1)
    reference = _one_step(_cfg(1, "single", conditional=conditional), SingleStrategy(torch.device("cpu")),
                          tmp_path / "ref")
    if conditional:  # the label terms are in the step: embedding and projection learned too
        assert {"G.embed.table.weight", "D.project.table.weight"} <= reference.keys()

    out = str(tmp_path / "two.pt")
    mp.spawn(_worker, args=(2, free_port(), kind, stage, conditional, out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    assert two.pop("nan_step_skipped")

    assert two.keys() == reference.keys()
    for k, ref in reference.items():
        if k.endswith("exp_avg"):  # ZeRO pads the tail of its flat partitions
            got, tol = two[k][:ref.numel()], dict(rtol=1e-4, atol=1e-7)
        else:
            got, tol = two[k], dict(rtol=0, atol=1e-5)
        assert torch.allclose(got, ref, **tol), (k, (got - ref).abs().max().item())
    # and the step did something: the big-batch gradient is not zero
    assert reference["D.exp_avg"].abs().max() > 1e-4 and reference["G.exp_avg"].abs().max() > 1e-4

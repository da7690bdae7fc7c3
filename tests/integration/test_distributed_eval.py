"""Image metrics across ranks: 2 gloo processes each generate and extract their share of the
images, rank 0 gathers and scores; the scores equal one process scoring all of them."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from models.dcgan import DCGANGenerator
from pipeline.evaluation import ImageEvaluator
from pipeline.metrics.image_eval import ImageMetrics
from pipeline.tracking import Tracker
from ray_helpers import build_mnist
from servers import free_port

N_FAKE = 301  # odd: the two shares differ in size
Z_DIM = 16


class _Counting(ImageMetrics):
    """Remembers how many images the scored features came from."""

    seen = 0

    def score_extracted(self, parts):
        self.seen = len(parts["features"])
        return super().score_extracted(parts)


def _evaluator(shards: str, cache: str, run_dir: str, comm=None) -> ImageEvaluator:
    metrics = _Counting(shards, cache, metrics=("fid", "kid", "pr", "coverage"), n_real=1024,
                           kid_subsets=10, kid_subset_size=200, classifier_steps=100)
    return ImageEvaluator(Z_DIM, run_dir, metrics, n_fake=N_FAKE, comm=comm)


def _generator() -> DCGANGenerator:
    torch.manual_seed(5)
    return DCGANGenerator(Z_DIM, 32, 1, 8).eval()


def _worker(rank: int, port: int, shards: str, cache: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pipeline.strategy.ddp import DDPStrategy

    strategy = DDPStrategy()
    evaluator = _evaluator(shards, cache, f"{tmp}/run{rank}", comm=strategy)
    scores = evaluator(_generator(), 0, Tracker())
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump({"scores": scores, "seen": evaluator.metrics.seen}, f)
    strategy.shutdown()


@pytest.mark.slow
def test_two_ranks_score_like_one(tmp_path):
    shards = str(build_mnist(tmp_path / "shards"))
    cache = str(tmp_path / "cache")  # empty: rank 0 trains the classifier, rank 1 waits and reads it
    mp.spawn(_worker, args=(free_port(), shards, cache, str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["seen"] == N_FAKE  # each share once, not all images on every rank
    rank0 = rank0["scores"]
    assert rank1["scores"] == {} and not (tmp_path / "run1" / "samples").exists()  # rank 0 alone scores and draws
    assert (tmp_path / "run0" / "samples" / "grid-000000000.png").is_file()
    assert len(list((tmp_path / "cache").glob("classifier-*.safetensors"))) == 1

    torch.set_num_threads(1)
    single = _evaluator(shards, cache, str(tmp_path / "single"))(_generator(), 0, Tracker())
    assert set(rank0) == set(single) and single["classes_total"] == 10
    for k, v in single.items():
        assert rank0[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k

"""The shard stream: rank/worker splits, resampled epochs, resume, and every kind of bad input."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data import ShardStream
from pipeline.errors import GantryError
from pipeline.shards import load_manifest
from pipeline.shards.plan import plan_shards
from shard_helpers import build_indexed, first_key, indices, refresh_hash, rewrite_member

N = 240   # 12 shards of 20


@pytest.fixture
def shards(tmp_path):
    return build_indexed(tmp_path, n=N, shard_size=20)


def epochs(stream, n):
    """The batches of the stream's next n epochs, one list per epoch (from where it stands)."""
    out = [[] for _ in range(n)]
    start = stream.state_dict()["epoch"]
    while True:
        batch = next(stream)
        e = stream.state_dict()["epoch"] - start
        if e == n:
            return out
        out[e].append(batch)


def epoch_batches(stream):
    return epochs(stream, 1)[0]


def seen(batches) -> list[int]:
    return [i for x, _ in batches for i in indices(x)]


def test_two_ranks_two_workers_cover_the_epoch_exactly_once(shards):
    per_rank = []
    for rank in range(2):
        s = ShardStream(shards, rank=rank, world_size=2, seed=5, batch=16, loader_workers=2, shuffle_buffer=50)
        batches = epoch_batches(s)
        assert all(x.shape[1:] == (1, 8, 8) for x, _ in batches)
        assert all(y.tolist() == [i % 3 for i in indices(x)] for x, y in batches)   # labels travel along
        per_rank.append(seen(batches))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(N))


def test_order_is_seeded_and_reshuffled_each_epoch(shards):
    def two_epochs(seed):
        s = ShardStream(shards, seed=seed, batch=40, loader_workers=0, shuffle_buffer=50)
        return tuple(seen(e) for e in epochs(s, 2))
    a0, a1 = two_epochs(1)
    assert (a0, a1) == two_epochs(1)
    assert a0 != a1 and sorted(a0) == sorted(a1) == list(range(N))
    assert two_epochs(2)[0] != a0


def test_each_rank_streams_its_share_of_every_epochs_plan(shards):
    """Each rank computes its share of each epoch's plan itself (a pure function of manifest,
    epoch, seed and world size), so every launcher (local, torchrun, Ray on any node) streams the
    same shards in the same epochs; a rank does not keep epoch 0's shards for the whole run."""
    manifest = load_manifest(shards)

    def samples_of(url):
        return set(seen([next(ShardStream(shards, shards=[url], batch=20, loader_workers=0, shuffle_buffer=0))]))

    for rank in range(2):
        s = ShardStream(shards, rank=rank, world_size=2, seed=5, batch=16, loader_workers=2, shuffle_buffer=50)
        got = [set(seen(e)) for e in epochs(s, 3)]
        want = [set().union(*map(samples_of, plan_shards(manifest, e, 5, 2)[rank])) for e in range(3)]
        assert got == want
        assert len({frozenset(g) for g in got}) > 1  # the share changes from epoch to epoch


def test_resampled_ranks_yield_exactly_the_configured_batches(shards):
    for rank in range(2):
        s = ShardStream(shards, rank=rank, world_size=2, batch=16, loader_workers=2,
                        shuffle_buffer=20, resampled=True, batches_per_epoch=7)
        for batches in epochs(s, 2):
            assert len(batches) == 7 and all(len(y) == 16 for _, y in batches)


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_continues_with_unseen_samples(shards, resampled):
    kw = dict(seed=3, batch=12, loader_workers=2, shuffle_buffer=40, resampled=resampled, batches_per_epoch=None)
    if resampled:
        kw["batches_per_epoch"] = 15
    first = ShardStream(shards, **kw)
    head = [next(first) for _ in range(6)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 0 and state["samples"] == 72 and state["batches"] == 6
    tail_uninterrupted = epoch_batches(first)

    resumed = ShardStream(shards, **kw)
    resumed.load_state_dict(state)
    tail = epoch_batches(resumed)
    assert sorted(seen(tail)) == sorted(seen(tail_uninterrupted))
    if resampled:
        assert len(head) + len(tail) == 15
    else:
        assert sorted(seen(head) + seen(tail)) == list(range(N))


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_streaming_leaves_the_global_rng_alone(shards, loader_workers):
    """A resumed run starts its loader at a step where the straight run did not; if that drew
    from torch's global RNG, every latent after it would differ and resume would not be exact."""
    import torch

    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    s = ShardStream(shards, seed=3, batch=12, loader_workers=loader_workers, shuffle_buffer=40)
    epoch_batches(s)  # one loader for this epoch, then the next epoch's starts
    assert torch.equal(torch.rand(3), expected)


def test_from_config(shards):
    cfg = DataConfig(source="shards", path=str(shards), loader_workers=0, shuffle_buffer=10)
    s = ShardStream.from_config(cfg, rank=1, world_size=2, seed=0, batch=8)
    x, y = next(s)
    assert x.shape == (8, 1, 8, 8) and s.rank == 1
    with pytest.raises(GantryError, match="needs data.source: shards"):
        ShardStream.from_config(DataConfig(), rank=0, world_size=1, seed=0, batch=8)


# -- bad input: each case damages shard 1 (20 samples); `lost` is what an epoch then misses.

def truncate(out):
    p = out / load_manifest(out).shards[1].url
    p.write_bytes(p.read_bytes()[:5000])
    return "src-000001.tar", None, "truncated", 20


def truncate_rehashed(out):
    truncate(out)
    refresh_hash(out, 1)    # the manifest agrees, so only the tar parser can notice
    return "src-000001.tar", None, "unreadable tar", None


def undecodable(out):
    key = first_key(out, 1)
    return rewrite_member(out, 1, f"{key}.png", b"\x89PNG not really"), key, "undecodable image", 1


def wrong_shape(out):
    import io
    from PIL import Image
    key = first_key(out, 1)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return rewrite_member(out, 1, f"{key}.png", buf.getvalue()), key, "image is 4x4, expected 8x8", 1


def missing(out):
    (out / load_manifest(out).shards[1].url).unlink()
    return "src-000001.tar", None, "cannot read shard", 20


def flipped(out):
    p = out / load_manifest(out).shards[1].url
    data = bytearray(p.read_bytes())
    data[3000] ^= 0xFF
    p.write_bytes(bytes(data))
    return "src-000001.tar", None, "sha256 does not match", 20


CASES = [truncate, truncate_rehashed, undecodable, wrong_shape, missing, flipped]


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_bad_input_skip_counts_and_warns(shards, damage, caplog):
    shard, key, problem, lost = damage(shards)
    s = ShardStream(shards, batch=16, loader_workers=0, shuffle_buffer=30, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="gantry.data"):
        got = seen(epoch_batches(s))
    assert len(got) == len(set(got))
    if lost is not None:
        assert len(got) == N - lost
    else:
        assert N - 20 <= len(got) < N
    skipped = s.state_dict()["skipped"]
    assert skipped == ({"samples": 1, "shards": 0} if key else {"samples": skipped["samples"], "shards": 1})
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == sum(skipped.values())
    assert shard in warnings[0] and problem in warnings[0] and (key is None or key in warnings[0])


@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_bad_input_fail_names_shard_and_key(shards, damage):
    shard, key, problem, _ = damage(shards)
    s = ShardStream(shards, batch=16, loader_workers=2, shuffle_buffer=30, on_error="fail")
    with pytest.raises(GantryError) as err:
        epoch_batches(s)
    msg = str(err.value)
    assert "\n" not in msg and shard in msg and problem in msg and (key is None or key in msg)


def test_resampled_stream_with_no_readable_shard_stops(shards):
    for entry in load_manifest(shards).shards:
        (shards / entry.url).unlink()
    s = ShardStream(shards, batch=8, loader_workers=0, resampled=True, batches_per_epoch=3)
    with pytest.raises(GantryError, match="bad shards in a row"):
        next(s)

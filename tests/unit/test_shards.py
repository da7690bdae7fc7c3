"""Shard building, appending, verifying and planning, on real MNIST and small indexed arrays."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import ShardStream
from pipeline.errors import GantryError
from pipeline.shards import add_shards, build_shards, load_manifest, plan_shards, verify_shards
from pipeline.shards.sources import load_source
from pipeline.shards.verify import read_samples
from shard_helpers import build_indexed, indexed_npz, indices


@pytest.fixture(scope="module")
def mnist():
    return load_source("mnist", 32)


def stream_all(out, **kw):
    s = ShardStream(out, batch=32, loader_workers=0, shuffle_buffer=64, **kw)
    batches = []
    while True:
        x, y = next(s)
        if s.state_dict()["epoch"]:
            return batches
        batches.append((x, y))


def test_mnist_source_is_the_real_70k(mnist):
    assert mnist.items.shape == (70000, 28, 28, 1) and mnist.items.dtype == np.uint8
    assert sorted(mnist.classes) == list(range(10)) and set(np.unique(mnist.labels)) == set(range(10))
    assert mnist.items.max() == 255 and 0.1 < (mnist.items > 0).mean() < 0.3   # digits, not noise


def test_mnist_pad_round_trip_is_bit_identical(tmp_path, mnist):
    m = build_shards("mnist", tmp_path / "m", 32, pad=True, limit=300, shard_size=100, workers=1)
    assert (m.samples, len(m.shards), m.channels, m.transform) == (300, 3, 1, "pad")
    want = Counter()
    for img, label in zip(mnist.items[:300], mnist.labels[:300]):
        want[(np.pad(img[..., 0], 2).tobytes(), int(label))] += 1
    got = Counter()
    for x, y in stream_all(tmp_path / "m"):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32) and y.dtype == torch.int64
        assert x.min() >= -1 and x.max() <= 1
        px = ((x[:, 0] + 1) * 127.5).round().byte()
        assert torch.equal(px.float() / 127.5 - 1, x[:, 0])   # every value is an exact uint8 level
        for img, label in zip(px.numpy(), y.tolist()):
            got[(img.tobytes(), label)] += 1
    assert got == want


def test_mnist_resize_uses_the_named_filter(tmp_path, mnist):
    build_shards("mnist", tmp_path / "r", 32, filter="lanczos", limit=5, workers=1)
    x, _ = next(ShardStream(tmp_path / "r", batch=5, loader_workers=0, shuffle_buffer=0))
    got = sorted(img.tobytes() for img in ((x[:, 0] + 1) * 127.5).round().byte().numpy())
    want = sorted(np.asarray(Image.fromarray(img[..., 0]).resize((32, 32), Image.Resampling.LANCZOS)).tobytes()
                  for img in mnist.items[:5])
    assert got == want


def test_build_is_deterministic_across_runs_and_process_counts(tmp_path):
    src = indexed_npz(tmp_path / "a.npz", 90)
    build_shards(str(src), tmp_path / "one", 8, shard_size=30, workers=1)
    build_shards(str(src), tmp_path / "two", 8, shard_size=30, workers=2)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == ["a-000000.tar", "a-000001.tar", "a-000002.tar", "manifest.json"]
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_manifest_records_counts_hashes_and_labels(tmp_path):
    out = build_indexed(tmp_path, n=50, shard_size=20)
    d = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in d["shards"]] == [20, 20, 10]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in d["shards"])
    assert (d["version"], d["resolution"], d["channels"], d["samples"]) == (1, 8, 1, 50)
    assert d["classes"] == {"0": "0", "1": "1", "2": "2"}
    assert verify_shards(out).ok


def test_add_continues_numbering_and_bumps_version(tmp_path):
    out = build_indexed(tmp_path, n=50, shard_size=20)
    folder = tmp_path / "imgs"
    for cls, value in (("1", 40), ("cats", 200)):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12), value + i, np.uint8)).save(folder / cls / f"{i}.png")
    m = add_shards(out, str(folder), workers=1)
    assert m.version == 2 and m.samples == 56
    assert [e.url for e in m.shards] == ["src-000000.tar", "src-000001.tar", "src-000002.tar", "src-000003.tar"]
    assert m.classes == {0: "0", 1: "1", 2: "2", 3: "cats"}      # "1" kept its label, "cats" is new
    assert m.sources[1]["version"] == 2 and m.sources[1]["samples"] == 6
    assert verify_shards(out).ok
    labels = Counter(y for _, ys in stream_all(out) for y in ys.tolist())
    assert labels[3] == 3 and labels[1] == 17 + 3


def test_folder_source_rgb_and_bad_sources(tmp_path):
    folder = tmp_path / "rgb"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a" / "x.png")
    m = build_shards(str(folder), tmp_path / "o", 16, workers=1)
    assert m.channels == 3 and m.samples == 1
    with pytest.raises(GantryError, match="already holds shards"):
        build_shards(str(folder), tmp_path / "o", 16)
    with pytest.raises(GantryError, match="cannot pad a 20x30 image to 16x16"):
        build_shards(str(folder), tmp_path / "p", 16, pad=True, workers=1)
    with pytest.raises(GantryError, match="no-such: no such file"):
        build_shards("no-such", tmp_path / "q", 16)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(GantryError, match="C 1 or 3"):
        build_shards(str(bad), tmp_path / "r", 4)


@pytest.mark.parametrize("kind,modes", [("toy-ring", 8), ("toy-grid", 25)])
def test_toy_sources_render_one_blob_per_mode(kind, modes):
    src = load_source(kind, 16).head(400)
    assert src.items.shape == (400, 16, 16, 1) and set(src.labels.tolist()) == set(range(modes))
    peaks = {int(l): divmod(int(img.argmax()), 16) for img, l in zip(src.items, src.labels)}
    assert len(set(peaks.values())) == modes    # each mode lights a different place


def test_plan_is_deterministic_disjoint_balanced_and_shuffled(tmp_path):
    m = load_manifest(build_indexed(tmp_path, n=230, shard_size=20))   # 12 shards, last one 10
    plans = [plan_shards(m, epoch, seed=3, world_size=3) for epoch in range(3)]
    assert plans[0] == plan_shards(m, 0, 3, 3)
    assert plans[0] != plans[1]
    for plan in plans:
        flat = [u for rank in plan for u in rank]
        assert sorted(flat) == sorted(str(m.path(e)) for e in m.shards)
        loads = [sum(m.entry(u).samples for u in rank) for rank in plan]
        assert max(loads) - min(loads) <= 20
    with pytest.raises(GantryError, match="12 shards cannot feed 13 ranks"):
        plan_shards(m, 0, 0, 13)


def test_mnist_holds_out_its_own_test_set(mnist):
    assert mnist.heldout.sum() == 10_000 and mnist.heldout[-10_000:].all()  # the test part comes last
    train, held = mnist.split()
    assert (len(train), len(held)) == (60_000, 10_000)
    assert set(np.unique(held.labels)) == set(range(10)) and "test set" in mnist.heldout_rule
    assert mnist.head(300).split()[1] is None  # the first images are training images


def test_heldout_split_is_disjoint_deterministic_and_never_trained_on(tmp_path):
    src = indexed_npz(tmp_path / "src.npz", 200)
    m = build_shards(str(src), tmp_path / "a", 8, shard_size=20, workers=1, heldout=0.25)
    again = build_shards(str(src), tmp_path / "b", 8, shard_size=20, workers=1, heldout=0.25)
    assert [e.sha256 for e in m.heldout] == [e.sha256 for e in again.heldout] and m.shards == again.shards
    assert 30 < m.heldout_samples < 70 and m.samples + m.heldout_samples == 200
    assert "0.25 of the samples" in m.heldout_rule and m.heldout[0].url == "src-heldout-000000.tar"
    assert load_manifest(tmp_path / "a").heldout == m.heldout

    trained = [i for x, _ in stream_all(tmp_path / "a") for i in indices(x)]
    held = []
    for e in m.heldout:
        for files in read_samples((tmp_path / "a" / e.url).read_bytes()).values():
            px = np.asarray(Image.open(io.BytesIO(files["png"])))
            held.append(int(px[0, 0]) + 256 * int(px[0, 1]))
    assert sorted(trained) == sorted(set(trained)) and not set(trained) & set(held)
    assert sorted(trained + held) == list(range(200))
    report = verify_shards(tmp_path / "a")
    assert report.ok and report.shards == len(m.shards) + len(m.heldout) and report.samples == 200
    with pytest.raises(GantryError, match="--heldout must be between 0 and 1"):
        build_shards(str(src), tmp_path / "c", 8, heldout=1.5)


def test_format_1_manifests_still_load(tmp_path):
    out = build_indexed(tmp_path, n=40)
    d = json.loads((out / "manifest.json").read_text())
    d["format"] = 1
    for key in ("heldout", "heldout_rule"):
        d.pop(key)
    (out / "manifest.json").write_text(json.dumps(d))
    m = load_manifest(out)
    assert m.samples == 40 and m.heldout == [] and verify_shards(out).ok

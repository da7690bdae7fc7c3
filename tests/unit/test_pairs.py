"""Paired shards (`gantry shards build SOURCE OUT --pairs`): A/ and B/ folders, side-by-side AB
images and mnist-edges, read back from the tars; bad pairs under --on-error; older manifests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from launch.cli import main
from pipeline.errors import GantryError
from pipeline.shards import add_shards, build_shards, load_manifest, verify_shards
from pipeline.shards.imaging import decode_pair, fit
from pipeline.shards.manifest import FORMAT
from pipeline.shards import pairs
from pipeline.shards.pairs import load_pair_source
from pipeline.shards.sources import load_source
from pipeline.shards.verify import read_samples
from shard_helpers import build_indexed, png, rewrite_member


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(path)
    return path


def noise(h: int, w: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every training sample of a shard directory, by key."""
    m = load_manifest(out)
    found = {}
    for e in m.shards:
        found.update(read_samples(Path(m.path(e)).read_bytes()))
    return found


def decoded(out: Path) -> list[tuple[np.ndarray, np.ndarray, int | None]]:
    m = load_manifest(out)
    return [decode_pair(files, m.resolution, m.channels_a, m.channels_b, m.classes)
            for _, files in sorted(samples(out).items())]


def test_a_b_folders_round_trip(tmp_path):
    src = tmp_path / "maps"
    rels = ["0.png", "1.png", "sub/2.png"]     # paired by path below A/ and B/, sub-folders too
    a = {rel: save(src / "A" / rel, noise(8, 8, 1, i)) for i, rel in enumerate(rels)}
    b = {rel: save(src / "B" / rel, noise(8, 8, 3, 10 + i)) for i, rel in enumerate(rels)}
    m = build_shards(str(src), tmp_path / "out", 8, shard_size=2, workers=1, pairs=True)

    assert (m.task, m.channels_a, m.channels_b, m.channels, m.samples, m.classes) == ("pairs", 1, 3, 3, 3, {})
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["format"] == FORMAT == 3
    for rel, (got_a, got_b, label) in zip(rels, decoded(tmp_path / "out")):
        assert np.array_equal(got_a[..., 0], np.asarray(Image.open(a[rel])))
        assert np.array_equal(got_b, np.asarray(Image.open(b[rel])))
        assert label is None
    assert {frozenset(f) for f in samples(tmp_path / "out").values()} == {frozenset({"a.png", "b.png", "json"})}
    assert verify_shards(tmp_path / "out").ok


def test_side_by_side_images_split_into_their_halves_fitted_alike(tmp_path):
    left, right = noise(16, 16, 3, 1), noise(16, 16, 3, 2)
    left[..., 0] = 0                        # no red on the left, so halves cannot pass for each other
    save(tmp_path / "facades" / "1.png", np.concatenate([left, right], 1))
    save(tmp_path / "facades" / "2.png", np.concatenate([right, left], 1))
    m = build_shards(str(tmp_path / "facades"), tmp_path / "out", 8, filter="bilinear", workers=1, pairs=True)

    assert (m.channels_a, m.channels_b, m.sources[0]["fitted"]) == (3, 3, {"resized": 4})
    (a1, b1, _), (a2, b2, _) = decoded(tmp_path / "out")
    small_left, small_right = fit(left, 8, "resize:bilinear"), fit(right, 8, "resize:bilinear")
    assert np.array_equal(a1, small_left) and np.array_equal(b1, small_right)
    assert np.array_equal(a2, small_right) and np.array_equal(b2, small_left)


def test_odd_width_side_by_side_fails_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "ab"
    save(folder / "0.png", noise(8, 16, 1, 0))
    odd = save(folder / "1.png", noise(8, 17, 1, 1))
    assert main(["shards", "build", str(folder), str(tmp_path / "out"), "--pairs", "--resolution", "8",
                 "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err == (f"gantry: {odd}: side-by-side image of odd width 17: its halves A and B cannot be the same "
                   f"size; `--on-error skip` would leave it out\n")
    assert not (tmp_path / "out").exists()


def test_unpaired_and_mismatched_files_fail_or_are_skipped(tmp_path, capsys):
    src = tmp_path / "pairs"
    for side in "AB":
        png(src / side / "0.png", 8, 8, 10)
    png(src / "A" / "1_only_a.png", 8, 8, 20)
    png(src / "B" / "2_only_b.png", 8, 8, 30)
    png(src / "A" / "3.png", 8, 8, 40)
    png(src / "B" / "3.png", 8, 10, 40)
    cmd = ["shards", "build", str(src), str(tmp_path / "out"), "--pairs", "--resolution", "8", "--workers", "1"]

    assert main(cmd) == 1
    assert capsys.readouterr().err == (f"gantry: {src / 'A' / '1_only_a.png'}: no partner in B/ (pairs are matched "
                                       f"by their path below A/ and B/); `--on-error skip` would leave it out\n")
    assert main(cmd + ["--on-error", "skip"]) == 0
    assert "1 added, 3 unreadable skipped (A/1_only_a.png, B/2_only_b.png, A/3.png; " in capsys.readouterr().out
    skipped = load_manifest(tmp_path / "out").sources[0]["skipped"]
    assert [s["reason"] for s in skipped] == [
        "no partner in B/ (pairs are matched by their path below A/ and B/)",
        "no partner in A/ (pairs are matched by their path below A/ and B/)",
        "A is 8x8 but its partner in B/ is 8x10"]


def test_mnist_edges_are_deterministic_labelled_outlines_with_the_test_set_held_out(tmp_path, monkeypatch):
    mnist = load_source("mnist", 28)
    monkeypatch.setattr(pairs, "load_source", lambda spec, resolution: mnist)   # read MNIST once, not thrice
    source = load_pair_source("mnist-edges")
    assert source.heldout.sum() == 10_000 and "test set" in source.heldout_rule
    with pytest.raises(GantryError, match="mnist-edges is a paired source: build it with --pairs"):
        build_shards("mnist-edges", tmp_path / "unpaired", 32)
    builds = [build_shards("mnist-edges", tmp_path / name, 32, pad=True, limit=40, shard_size=16, workers=w,
                           pairs=True) for name, w in (("one", 1), ("two", 2))]
    assert [e.sha256 for e in builds[0].shards] == [e.sha256 for e in builds[1].shards]
    assert (builds[0].channels_a, builds[0].channels_b, builds[0].classes) == (1, 1, {d: str(d) for d in range(10)})

    got = decoded(tmp_path / "one")
    assert [label for _, _, label in got] == source.labels[:40].tolist()
    for (edges, digit, _), item in zip(got, source.items):
        assert np.array_equal(digit[2:30, 2:30], item.digit)   # B is the digit, padded
        assert set(np.unique(edges)) == {0, 255} and not np.array_equal(edges, digit)
        assert not (edges.astype(bool) & (digit >= 128)).any()   # an outline, off the stroke


def test_held_out_pairs_verify_and_add_refuses_them(tmp_path):
    for side in "AB":
        for i in range(8):
            png(tmp_path / "src" / side / f"{i}.png", 8, 8, i)
    out = tmp_path / "out"
    m = build_shards(str(tmp_path / "src"), out, 8, shard_size=8, workers=1, pairs=True, heldout=0.5)
    assert m.samples and m.heldout_samples and m.samples + m.heldout_samples == 8
    assert "0.5 of the samples" in m.heldout_rule and verify_shards(out).ok

    rewrite_member(out, 0, "000000001.b.png", b"not a png")
    report = verify_shards(out)
    assert report.lines()[0].endswith(f"7/8 samples checked ({m.heldout_samples} held out), "
                                      f"pairs 8x8x1 -> 8x8x1, version 1")
    assert len(report.problems) == 1
    assert report.problems[0].startswith("src-000000.tar: sample 000000001: undecodable image (UnidentifiedImageError")
    with pytest.raises(GantryError, match="holds pairs; `gantry shards add` appends images only"):
        add_shards(out, str(tmp_path / "src" / "A"))


def test_format_2_manifests_load_as_unpaired_images(tmp_path):
    out = build_indexed(tmp_path, n=40)
    d = json.loads((out / "manifest.json").read_text())
    d["format"] = 2
    for key in ("task", "channels_a", "channels_b"):
        d.pop(key)
    (out / "manifest.json").write_text(json.dumps(d))
    m = load_manifest(out)
    assert (m.task, m.channels_a, m.channels_b, m.samples) == ("images", None, None, 40)
    assert verify_shards(out).ok


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_the_stream_yields_each_target_with_its_own_input(tmp_path, loader_workers):
    from pipeline.data import ShardStream

    src = tmp_path / "maps"
    for i in range(10):  # B is A inverted, so a pair can be told from a mismatch
        save(src / "A" / f"{i}.png", np.full((8, 8, 1), 20 * i, np.uint8))
        save(src / "B" / f"{i}.png", np.full((8, 8, 3), 255 - 20 * i, np.uint8))
    build_shards(str(src), tmp_path / "out", 8, shard_size=4, workers=1, pairs=True)
    stream = ShardStream(tmp_path / "out", batch=5, loader_workers=loader_workers, shuffle_buffer=10)
    seen = []
    for _ in range(2):
        b, a = next(stream)
        assert b.shape == (5, 3, 8, 8) and a.shape == (5, 1, 8, 8) and a.dtype == b.dtype == torch.float32
        assert torch.equal(b.amin(dim=(1, 2, 3)), b.amax(dim=(1, 2, 3)))  # each image is flat
        torch.testing.assert_close(b[:, 0, 0, 0], -a[:, 0, 0, 0])  # 255 - v maps to -(v / 127.5 - 1)
        seen += a[:, 0, 0, 0].tolist()
    assert sorted(round((v + 1) * 127.5) for v in seen) == [20 * i for i in range(10)]  # one epoch, each once

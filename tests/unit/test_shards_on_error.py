"""`gantry shards build|add --on-error skip|fail` on real folders with files that do not decode."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from pipeline.shards import add_shards, build_shards, load_manifest, verify_shards
from shard_helpers import build_indexed, messy_folder, png, truncated_png

REPO = Path(__file__).resolve().parents[2]


def gantry(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", "shards", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def keys(out: Path) -> list[str]:
    m = load_manifest(out)
    found = []
    for e in m.shards:
        with tarfile.open(m.path(e)) as tar:
            found += [n.split(".")[0] for n in tar.getnames() if n.endswith(".png")]
    return found


def test_skip_builds_the_rest_lists_the_bad_files_and_verifies(tmp_path):
    folder, out = messy_folder(tmp_path / "imgs"), tmp_path / "out"
    r = gantry("build", folder, out, "--resolution", 32, "--shard-size", 3, "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    summary = r.stdout.splitlines()[-1]
    assert summary.startswith("images: 4 added, 2 unreadable skipped (a/2_trunc.png, b/x.jpg; "), summary
    assert "1 non-square image centre-cropped to a square, 4 images resized to 32x32 (box filter)" in summary

    record = json.loads((out / "manifest.json").read_text())["sources"][0]
    assert [(s["file"], s["reason"].split(" (")[0]) for s in record["skipped"]] == [
        ("a/2_trunc.png", "cannot read image"), ("b/x.jpg", "cannot read image")]
    assert "truncated" in record["skipped"][0]["reason"]
    assert (record["samples"], record["fitted"]) == (4, {"centre-cropped": 1, "resized": 4})
    assert keys(out) == [f"{i:09d}" for i in range(4)]          # no gap where the bad files were
    assert sorted(p.name for p in out.iterdir()) == ["imgs-000000.tar", "imgs-000001.tar", "manifest.json"]

    v = gantry("verify", out)
    assert v.returncode == 0 and v.stdout.strip().endswith("OK"), v.stdout


def test_fail_names_the_first_bad_file_and_leaves_out_as_it_was(tmp_path):
    folder = messy_folder(tmp_path / "imgs")
    new, mine = tmp_path / "new" / "out", tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    for out in (new, mine):
        # Two samples per shard: a shard of good images is done before the bad one is reached.
        r = gantry("build", folder, out, "--resolution", 32, "--shard-size", 2, "--workers", 2)
        assert r.returncode == 1 and r.stdout == ""
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"gantry: {folder / 'a' / '2_trunc.png'}: cannot read image (OSError: "), r.stderr
        # The truncated file's header reads: only decoding, while shards are written, finds it.
        (folder / "b" / "x.jpg").unlink(missing_ok=True)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_add_that_fails_leaves_shards_and_manifest_untouched(tmp_path):
    out = build_indexed(tmp_path, n=6, shard_size=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    extra = tmp_path / "extra"
    for i in range(3):
        png(extra / "c" / f"{i}.png", 8, 8, i)
    truncated_png(extra / "c" / "3_trunc.png")
    r = gantry("add", out, extra, "--workers", 1)
    assert r.returncode == 1 and "c/3_trunc.png: cannot read image" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    r = gantry("add", out, extra, "--workers", 1, "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    assert "images: 3 added, 1 unreadable skipped (c/3_trunc.png; " in r.stdout
    m = load_manifest(out)
    assert (m.version, m.samples, m.sources[1]["skipped"][0]["file"]) == (2, 9, "c/3_trunc.png")
    assert keys(out) == [f"{i:09d}" for i in range(9)]


def test_skipping_output_is_the_same_for_any_worker_count(tmp_path):
    folder = messy_folder(tmp_path / "imgs")
    outs = [tmp_path / f"w{w}" for w in (1, 2)]
    for out, w in zip(outs, (1, 2)):
        build_shards(str(folder), out, 32, shard_size=2, workers=w, on_error="skip")
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["imgs-000000.tar", "imgs-000001.tar", "manifest.json"]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_manifests_written_before_skipping_existed_still_load_verify_and_grow(tmp_path):
    out = build_indexed(tmp_path, n=4, shard_size=2)
    d = json.loads((out / "manifest.json").read_text())
    for record in d["sources"]:
        del record["skipped"], record["fitted"]
    (out / "manifest.json").write_text(json.dumps(d, indent=1) + "\n")
    assert verify_shards(out).ok
    png(tmp_path / "more" / "0" / "a.png", 8, 8, 1)
    m = add_shards(out, str(tmp_path / "more"), workers=1)
    assert m.samples == 5 and "skipped" not in m.sources[0] and m.sources[1]["skipped"] == []

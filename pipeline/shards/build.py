"""Write shards: `build_shards` starts a directory, `add_shards` appends to one.

Output is deterministic: the same source and options give byte-identical tars and manifest
(fixed tar mtime/uid/gid/mode, members in key order, PNG without timestamps), however many
processes wrote them. A process pool reads, fits and PNG-encodes the items and hands them back
in source order; this process numbers the ones that decoded and packs them into tars, so a
skipped file (`on_error="skip"`) shifts the keys and shard boundaries after it the same way
whatever the worker count, and every file is decoded once.

A command adds its shards whole or not at all: tars are staged in a hidden folder inside OUT,
moved in when every item is written, and the manifest is saved last (it is the commit). On any
failure OUT is left as it was before the command.
"""
from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.shards.imaging import PAIR, encode_png, fit, fit_steps, transform_name
from pipeline.shards.manifest import MANIFEST, Manifest, ShardEntry, load_manifest, sha256_bytes
from pipeline.shards.pairs import PAIR_BUILTINS, load_pair, load_pair_source
from pipeline.shards.sources import Source, UnreadableItem, load_item, load_source

ON_ERROR = ("fail", "skip")
_CHUNK = 32   # items per pool task: amortizes the pipe, still spreads work evenly
STAGING = ".staging-"  # prefix of the hidden folder inside OUT where shards wait to be published


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def sample_key(index: int) -> str:
    return f"{index:09d}"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _Encoded(NamedTuple):
    files: dict[str, bytes] | None  # tar member extension -> PNG; None: the item does not decode
    steps: tuple[str, ...]          # what fitting did to its images (imaging.fit_steps), image by image
    why: str = ""                   # why it does not decode


def _encode(item, channels: int, channels_a: int | None, resolution: int, transform: str) -> _Encoded:
    """Read, fit and PNG-encode one item: an image, or the pair (A, B) when CHANNELS_A is
    given. Runs in a pool worker."""
    try:
        images = (dict(zip(PAIR, load_pair(item, channels_a, channels))) if channels_a
                  else {"png": load_item(item, channels)})
    except UnreadableItem as e:
        return _Encoded(None, (), str(e))
    steps = [step for img in images.values() for step in fit_steps(*img.shape[:2], resolution, transform)]
    return _Encoded({ext: encode_png(fit(img, resolution, transform)) for ext, img in images.items()}, tuple(steps))


@contextlib.contextmanager
def _ordered_map(workers: int):
    """A lazy map that keeps input order, over `workers` processes.

    Pool.imap buffers results the consumer has not taken yet; here they are PNGs at the shard
    resolution, and packing them into tars costs less than making them, so few ever wait.
    """
    if workers == 1:
        yield map
        return
    # spawn, not fork: callers (tests, the trainer) may hold threads that fork would copy broken.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield functools.partial(pool.imap, chunksize=_CHUNK)


@dataclass
class _Tally:
    """What happened to the source's items on their way into shards, for the manifest."""
    skipped: list[dict] = field(default_factory=list)    # {"file", "reason"} per skipped file
    fitted: Counter = field(default_factory=Counter)     # fit step -> images it was applied to


def _kept(src: Source, labels: np.ndarray, results: Iterable[_Encoded], on_error: str,
          tally: _Tally) -> Iterator[tuple[int, dict[str, bytes]]]:
    """(label, files) of every item that decoded, in order; ON_ERROR decides about the others."""
    for item, label, r in zip(src.items, labels, results):
        if r.files is not None:
            tally.fitted.update(r.steps)
            yield int(label), r.files
        elif on_error == "skip":
            tally.skipped.append({"file": src.item_name(item), "reason": r.why})
        else:
            raise GantryError(f"{os.fspath(item)}: {r.why}; `--on-error skip` would leave it out")


def _write_shard(path: Path, first: int, samples: list[tuple[int, dict[str, bytes]]], m: Manifest,
                 source: str) -> ShardEntry:
    """One tar of SAMPLES keyed from FIRST on, written and fsynced. Shards without a label set
    (unlabelled pairs) get no `.cls`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for index, (label, files) in enumerate(samples, first):
            key = sample_key(index)
            meta = {"index": index, "source": source}
            if m.classes:
                meta["class"] = m.classes[label]
                _add_member(tar, f"{key}.cls", str(label).encode())
            _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
            for ext, data in files.items():
                _add_member(tar, f"{key}.{ext}", data)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return ShardEntry(path.name, len(samples), len(data), sha256_bytes(data))


def _stage(m: Manifest, src: Source, labels: np.ndarray, workers: int | None, on_error: str,
           staging: Path, tally: _Tally, heldout: bool = False) -> list[ShardEntry]:
    """Write SRC's decodable items as the shards that follow M's (or its held-out ones), into
    STAGING."""
    encode = functools.partial(_encode, channels=m.channels, channels_a=m.channels_a, resolution=m.resolution,
                               transform=m.transform)
    workers = max(1, min(workers or os.cpu_count() or 1, math.ceil(len(src) / m.shard_size)))
    with _ordered_map(workers) as ordered_map:
        entries = _pack(m, _kept(src, labels, ordered_map(encode, src.items), on_error, tally), src.name, staging,
                        heldout)
    if not entries:
        first = tally.skipped[0]
        raise GantryError(f"{src.description}: none of its {len(src)} files could be read "
                          f"(the first, {first['file']}: {first['reason']})")
    return entries


def _pack(m: Manifest, samples: Iterator[tuple[int, dict[str, bytes]]], source: str, staging: Path,
          heldout: bool = False) -> list[ShardEntry]:
    """(label, files) samples as the shards that follow M's (or its held-out ones: their own
    names and keys), into STAGING, one shard in memory at a time."""
    entries: list[ShardEntry] = []
    after = m.heldout if heldout else m.shards
    name = f"{m.name}-heldout" if heldout else m.name
    while chunk := list(itertools.islice(samples, m.shard_size)):
        path = staging / shard_name(name, len(after) + len(entries))
        first = sum(e.samples for e in after) + m.shard_size * len(entries)
        entries.append(_write_shard(path, first, chunk, m, source))
    return entries


def _publish(m: Manifest, staging: Path, entries: list[ShardEntry], record: dict,
             heldout: list[ShardEntry] = ()) -> None:
    """Move (or upload) the staged shards into M's location, then save the manifest, which
    commits them."""
    placed = []
    try:
        for e in [*entries, *heldout]:
            if storage.is_local(m.root):
                os.replace(staging / e.url, m.path(e))
            else:
                storage.write_bytes(m.path(e), (staging / e.url).read_bytes())
            placed.append(m.path(e))
        m.sources.append(record)
        m.shards.extend(entries)
        m.heldout.extend(heldout)
        m.save()
    except BaseException:
        for url in placed:
            storage.remove(url)
        raise


def _write(m: Manifest, src: Source, labels: np.ndarray, workers: int | None, on_error: str,
           heldout: Source | None = None) -> None:
    """Append SRC to M as new shards (and HELDOUT as held-out ones) and commit, or fail leaving
    M's location untouched. Shards are staged beside their destination on a local disk, in a
    temporary folder for an object store, and uploaded whole."""
    near = storage.local_path(m.root) if storage.is_local(m.root) else None
    with tempfile.TemporaryDirectory(dir=near, prefix=STAGING) as staging:
        tally = _Tally()
        entries = _stage(m, src, labels, workers, on_error, Path(staging), tally)
        held = _stage(m, heldout, heldout.labels, workers, on_error, Path(staging), tally, heldout=True) \
            if heldout is not None else []
        record = {"version": m.version, "source": src.description,
                  "samples": sum(e.samples for e in entries),
                  "first_shard": entries[0].url, "shard_count": len(entries),
                  "skipped": tally.skipped, "fitted": dict(sorted(tally.fitted.items()))}
        if held:
            record["heldout"] = {"samples": sum(e.samples for e in held), "shard_count": len(held)}
        _publish(m, Path(staging), entries, record, held)


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise GantryError(f"--on-error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")


@contextlib.contextmanager
def _new_dir(out: str):
    """Make OUT (and missing parents); if the body fails, remove the folders made here, which
    the failed body has left empty, so the file system is as it was. An object store has no
    folders to make; its bucket must exist."""
    if not storage.is_local(out):
        storage.ensure_dir(out)
        yield
        return
    out = Path(storage.local_path(out))
    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in made:   # deepest first
            with contextlib.suppress(OSError):   # not empty: someone else wrote there; keep it
                p.rmdir()
        raise


def build_shards(source: str, out: str, resolution: int, *, shard_size: int = 1000,
                 filter: str = "box", pad: bool = False, limit: int | None = None,
                 name: str | None = None, workers: int | None = None,
                 on_error: str = "fail", heldout: float | None = None, pairs: bool = False) -> Manifest:
    """Write SOURCE as shards into OUT (new or empty of shards) at data version 1.

    on_error: "fail" stops at the first file that does not decode (or, with pairs, the first
    bad pair); "skip" leaves such files out and lists them in the manifest's source record.
    heldout: the fraction of samples kept out of training (MNIST holds out its own test set
    unless this is given). pairs: SOURCE is a paired source (pipeline/shards/pairs.py) and each
    sample holds its A and B.
    """
    _check_on_error(on_error)
    if resolution <= 0 or shard_size <= 0:
        raise GantryError(f"--resolution and --shard-size must be positive, got {resolution}, {shard_size}")
    out = str(out)
    storage.check(out, write=True)
    if storage.exists(storage.join(out, MANIFEST)):
        raise GantryError(f"{out} already holds shards; append with `gantry shards add {out} SOURCE`")
    transform = transform_name(pad, filter)
    if source in PAIR_BUILTINS and not pairs:
        raise GantryError(f"{source} is a paired source: build it with --pairs")
    src = (load_pair_source(source) if pairs else load_source(source, resolution)).head(limit)
    if heldout is not None:
        src.hold_out(heldout)
    train, held = src.split()
    m = Manifest(name=name or src.name, version=1, resolution=resolution, channels=src.channels,
                 transform=transform, shard_size=shard_size, classes=dict(src.classes),
                 sources=[], shards=[], heldout_rule=src.heldout_rule if held else "", root=out)
    if pairs:
        m.task, m.channels_a, m.channels_b = "pairs", src.channels_a, src.channels
    with _new_dir(out):
        _write(m, train, train.labels, workers, on_error, held)
    return m


def add_shards(out: str, source: str, *, limit: int | None = None,
               workers: int | None = None, on_error: str = "fail") -> Manifest:
    """Append SOURCE to an existing directory with its resolution and transform; bump the version.

    Class names already present keep their labels; new names get new labels (folders), while
    array and built-in labels are taken as they are and must not rename an existing class.
    on_error is as for `build_shards`.
    """
    _check_on_error(on_error)
    storage.check(str(out), write=True)
    m = load_manifest(out)
    if m.task != "images":
        raise GantryError(f"{out} holds {m.task}; `gantry shards add` appends images only (build a new "
                          f"directory with `gantry shards build SOURCE OUT --pairs`)")
    src = load_source(source, m.resolution).head(limit)
    if src.channels != m.channels and not (src.channels == 1 and m.channels == 3):
        raise GantryError(f"{source} has {src.channels}-channel images, {out} holds {m.channels}-channel shards")
    src.channels = m.channels
    labels = _merge_classes(m, src, folder=isinstance(src.items, list), origin=source)
    m.version += 1
    _write(m, src, labels, workers, on_error)
    return m


def _merge_classes(m: Manifest, src: Source, folder: bool, origin: str) -> np.ndarray:
    """Map the source's labels onto the manifest's label set, extending it; returns new labels."""
    by_name = {v: k for k, v in m.classes.items()}
    remap = {}
    for label, cname in sorted(src.classes.items()):
        if folder:
            remap[label] = by_name.get(cname, max(m.classes, default=-1) + 1)
        elif label in m.classes and m.classes[label] != cname:
            raise GantryError(f"{origin}: label {label} is class '{cname}' but the shards call it '{m.classes[label]}'")
        else:
            remap[label] = label
        m.classes[remap[label]] = cname
    src.classes = {remap[k]: v for k, v in src.classes.items()}
    return np.array([remap[int(x)] for x in src.labels], np.int64)


def build_from_samples(out: str, samples: Iterable[tuple[int, bytes]], *, name: str, resolution: int, channels: int,
                       classes: dict[int, str], description: str, provenance: dict,
                       shard_size: int = 1000) -> Manifest:
    """Shards of (label, PNG) samples that something other than a source made (`gantry export`):
    the same staging and commit as `build_shards`, so a writer stopped midway leaves no
    manifest; `provenance` is kept in the manifest's source record."""
    out = str(out)
    storage.check(out, write=True)
    m = Manifest(name=name, version=1, resolution=resolution, channels=channels, transform="generated",
                 shard_size=shard_size, classes=classes, sources=[], shards=[], root=out)
    near = storage.local_path(out) if storage.is_local(out) else None
    with _new_dir(out), tempfile.TemporaryDirectory(dir=near, prefix=STAGING) as staging:
        entries = _pack(m, ((label, {"png": png}) for label, png in samples), description, Path(staging))
        if not entries:
            raise GantryError(f"{description}: no samples to write")
        record = {"version": 1, "source": description, "samples": sum(e.samples for e in entries),
                  "first_shard": entries[0].url, "shard_count": len(entries), "skipped": [], "fitted": {},
                  "provenance": provenance}
        _publish(m, Path(staging), entries, record)
    return m

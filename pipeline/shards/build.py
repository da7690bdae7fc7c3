"""Write shards: `build_shards` starts a directory, `add_shards` appends to one.

Output is deterministic: the same source and options give byte-identical tars and manifest
(fixed tar mtime/uid/gid/mode, members in key order, PNG without timestamps), however many
processes wrote them. Shards are encoded in a process pool, one task per shard.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
from pathlib import Path

import numpy as np

from pipeline.errors import GantryError
from pipeline.shards.imaging import encode_png, fit, transform_name
from pipeline.shards.manifest import MANIFEST, Manifest, ShardEntry, load_manifest, sha256_bytes
from pipeline.shards.sources import Source, load_item, load_source


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


def _write_shard(task) -> ShardEntry:
    """Encode one shard and write it atomically (tmp + fsync + rename). Runs in a pool worker."""
    path, first, items, labels, classes, source, resolution, channels, transform = task
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (item, label) in enumerate(zip(items, labels)):
            index = first + i
            key = sample_key(index)
            img = fit(load_item(item, channels), resolution, transform)
            meta = {"class": classes[int(label)], "index": index, "source": source}
            _add_member(tar, f"{key}.cls", str(int(label)).encode())
            _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
            _add_member(tar, f"{key}.png", encode_png(img))
    data = buf.getvalue()
    tmp = path.with_suffix(".tar.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return ShardEntry(path.name, len(labels), len(data), sha256_bytes(data))


def _write_all(m: Manifest, src: Source, labels: np.ndarray, workers: int) -> list[ShardEntry]:
    first_shard, first_index, size = len(m.shards), m.samples, m.shard_size
    tasks = [(m.root / shard_name(m.name, first_shard + k), first_index + start,
              src.items[start:start + size], labels[start:start + size], m.classes, src.name,
              m.resolution, m.channels, m.transform)
             for k, start in enumerate(range(0, len(src), size))]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        return [_write_shard(t) for t in tasks]
    # spawn, not fork: callers (tests, the trainer) may hold threads that fork would copy broken.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_write_shard, tasks, chunksize=1)


def _record(m: Manifest, src: Source, entries: list[ShardEntry]) -> None:
    m.sources.append({"version": m.version, "source": src.description, "samples": len(src),
                      "first_shard": entries[0].url, "shard_count": len(entries)})
    m.shards.extend(entries)
    m.save()


def build_shards(source: str, out: str | Path, resolution: int, *, shard_size: int = 1000,
                 filter: str = "box", pad: bool = False, limit: int | None = None,
                 name: str | None = None, workers: int | None = None) -> Manifest:
    """Write SOURCE as shards into OUT (new or empty of shards) at data version 1."""
    if resolution <= 0 or shard_size <= 0:
        raise GantryError(f"--resolution and --shard-size must be positive, got {resolution}, {shard_size}")
    out = Path(out)
    if (out / MANIFEST).exists():
        raise GantryError(f"{out} already holds shards; append with `gantry shards add {out} SOURCE`")
    transform = transform_name(pad, filter)
    src = load_source(source, resolution).head(limit)
    out.mkdir(parents=True, exist_ok=True)
    m = Manifest(name=name or src.name, version=1, resolution=resolution, channels=src.channels,
                 transform=transform, shard_size=shard_size, classes=dict(src.classes),
                 sources=[], shards=[], root=out)
    _record(m, src, _write_all(m, src, src.labels, workers))
    return m


def add_shards(out: str | Path, source: str, *, limit: int | None = None,
               workers: int | None = None) -> Manifest:
    """Append SOURCE to an existing directory with its resolution and transform; bump the version.

    Class names already present keep their labels; new names get new labels (folders), while
    array and built-in labels are taken as they are and must not rename an existing class.
    """
    m = load_manifest(out)
    src = load_source(source, m.resolution).head(limit)
    if src.channels != m.channels and not (src.channels == 1 and m.channels == 3):
        raise GantryError(f"{source} has {src.channels}-channel images, {out} holds {m.channels}-channel shards")
    src.channels = m.channels
    labels = _merge_classes(m, src, folder=isinstance(src.items, list), origin=source)
    m.version += 1
    _record(m, src, _write_all(m, src, labels, workers))
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

"""The training data stream: WebDataset shards -> DataLoader -> (images, labels) batches forever.

One `ShardStream` per rank. Each epoch:
  1. shard list: this rank's part of `plan_shards(manifest, epoch, seed, world_size)` (or an
     explicit list, reshuffled per epoch); in resampled mode, shards drawn with replacement.
  2. DataLoader worker w of W streams shards[w::W] (resampled: its own seeded draw), checks
     each shard's size and sha256 against the manifest when it opens it (one read, hashed in
     memory, then parsed from memory: no second read that could differ), expands the tar with
     webdataset, shuffles raw samples in a seeded buffer, decodes PNGs and batches.
  3. images are float32 (B, C, H, W) in [-1, 1], labels int64; pinned when CUDA is present.
     Paired shards (manifest task "pairs") yield (B, A) instead: the target images and the
     input images each sample is conditioned on, both float32 in [-1, 1].

Everything is seeded by (seed, epoch, rank, worker), so the order is a pure function of those.
Resume uses that: the state records how many raw samples each loader worker had delivered, and
a resumed worker replays its order and drops that prefix before decoding, so the stream goes
on with the next unseen samples.

Bad input (missing shard, size or sha256 mismatch, unreadable tar, undecodable image, wrong
shape or mode, bad label) follows `on_error`: "skip" drops the shard or sample, counts it in
`skipped` and logs one warning naming shard and key; "fail" raises GantryError naming them.

Non-resampled epochs end when the rank's shards run out (each loader worker's last batch may
be short) or after `batches_per_epoch`, whichever comes first. Resampled epochs are exactly
`batches_per_epoch` full batches on every rank (default: samples // (world_size * batch)), so
DDP ranks take the same number of steps.
"""
from __future__ import annotations

import io
import logging
import random
import zlib
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.shards.manifest import Manifest, check_shard_bytes, load_manifest
from pipeline.shards.plan import plan_shards

log = logging.getLogger("gantry.data")


class _Fault(Exception):
    """A bad shard or sample under on_error=fail; travels to the main process as an error item."""


class _Events:
    """Skip events of one loader worker, held until the next item carries them to the main process.

    `pos` counts raw samples the worker has emitted. Events that happen before `start` (while a
    resumed worker replays its consumed prefix) were reported before the checkpoint: dropped.
    """

    def __init__(self, on_error: str, start: int):
        self.on_error, self.start, self.pos, self.pending = on_error, start, 0, []

    def bad(self, kind: str, msg: str) -> None:
        if self.on_error == "fail":
            raise _Fault(msg)
        if kind == "sample" or self.pos >= self.start:
            self.pending.append((kind, msg))

    def tar_error(self, exn: Exception) -> bool:
        # webdataset appends (stream, url) to the args of tar errors; name the shard from them.
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), "?")
        self.bad("shard", f"{storage.basename(url)}: unreadable tar ({exn.args[0] if exn.args else exn})")
        return True

    def take(self) -> list:
        out, self.pending = self.pending, []
        return out


def _open_shards(urls, manifest: Manifest, events: _Events, give_up: int):
    """Yield webdataset's {url, stream} for each shard that exists and matches the manifest.

    After `give_up` bad shards in a row, stop: a resampled draw would otherwise spin forever."""
    bad_run = 0
    for url in urls:
        entry = manifest.entry(url)
        try:
            # One shard in memory at a time (bounded by the shard size): hashed, then parsed
            # from the same bytes. Transient network faults were retried by storage already.
            data = storage.read_bytes(url)
            why = check_shard_bytes(entry, data)
        except storage.StorageError as e:
            why = f"cannot read shard ({e.reason})"
        if why:
            events.bad("shard", f"{entry.url}: {why}")
            bad_run += 1
            if bad_run >= give_up:
                raise _Fault(f"{manifest.root}: {bad_run} bad shards in a row, last {entry.url}: {why}")
            continue
        bad_run = 0
        yield {"url": url, "stream": io.BytesIO(data)}


class _EpochData(IterableDataset):
    """One epoch of one rank, split over DataLoader workers. Yields dict items (see __iter__)."""

    def __init__(self, manifest, urls, *, tag, batch, shuffle_buffer, resampled, on_error, start):
        self.manifest, self.urls, self.tag, self.batch = manifest, urls, tag, batch
        self.shuffle_buffer, self.resampled, self.on_error, self.start = shuffle_buffer, resampled, on_error, start

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        events = _Events(self.on_error, self.start[w])
        try:
            yield from self._batches(w, n, events)
        except _Fault as e:
            yield {"error": str(e)}

    def _batches(self, w: int, n: int, events: _Events):
        m = self.manifest
        if self.resampled:
            rng = random.Random(f"resample/{self.tag}/{w}")
            urls = (rng.choice(self.urls) for _ in count())
        else:
            urls = iter(self.urls[w::n])
        files = tar_file_expander(_open_shards(urls, m, events, give_up=3 * len(self.urls) + 1),
                                  handler=events.tar_error)
        samples = group_by_keys(files, handler=events.tar_error)
        if self.shuffle_buffer > 1:
            samples = _shuffle(samples, self.shuffle_buffer, self.shuffle_buffer,
                               rng=random.Random(f"shuffle/{self.tag}/{w}"))
        images, conds = [], []
        for sample in samples:
            events.pos += 1
            if events.pos <= events.start:
                continue   # delivered before the checkpoint this stream resumed from
            shard, key = storage.basename(sample["__url__"]), sample["__key__"]
            try:
                img, cond = m.decode(sample)
            except ValueError as e:
                events.bad("sample", f"{shard}: sample {key}: {e}")
                continue
            images.append(img)
            conds.append(cond)
            if len(images) == self.batch:
                yield self._item(w, events, images, conds)
                images, conds = [], []
        if images or events.pending:
            yield self._item(w, events, images, conds)

    def _item(self, w, events, images, conds):
        paired = self.manifest.task == "pairs"
        return {"images": _to_float(images), "worker": w, "pos": events.pos, "events": events.take(),
                "conds": _to_float(conds) if paired else torch.tensor(conds, dtype=torch.int64)}


def _to_float(images: list[np.ndarray]) -> torch.Tensor | None:
    """uint8 HWC images -> float CHW in [-1, 1]; x / 127.5 - 1 maps 0 -> -1 and 255 -> 1 exactly.
    numpy, not torch: torch's intra-op pool costs more than the arithmetic at this size."""
    if not images:
        return None
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)
    x /= 127.5
    x -= 1
    return torch.from_numpy(x)


def _worker_init(_):
    torch.set_num_threads(1)   # decode workers must not fight the trainer for cores


class ShardStream:
    """Endless (images, labels) batches for one rank, or (B, A) image batches from paired
    shards; `state_dict` makes it resumable."""

    def __init__(self, manifest: str | Path | Manifest, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, batch: int = 64, shards: list[str] | None = None,
                 loader_workers: int = 1, shuffle_buffer: int = 1000, resampled: bool = False,
                 batches_per_epoch: int | None = None, on_error: str = "skip",
                 pin_memory: bool | None = None):
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        if on_error not in ("skip", "fail"):
            raise GantryError(f"data.on_error must be 'skip' or 'fail', got {on_error!r}")
        if not 0 <= rank < world_size or batch <= 0:
            raise GantryError(f"bad stream geometry: rank {rank}, world size {world_size}, batch {batch}")
        self.rank, self.world_size, self.seed, self.batch = rank, world_size, seed, batch
        self.shards = [self.manifest.path(self.manifest.entry(u)) for u in shards] if shards else None
        if not resampled and self.shards is None:
            plan_shards(self.manifest, 0, seed, world_size)   # fail now if the plan is impossible
        self.loader_workers, self.shuffle_buffer, self.resampled = loader_workers, shuffle_buffer, resampled
        if resampled and batches_per_epoch is None:
            batches_per_epoch = max(1, self.manifest.samples // (world_size * batch))
        self.batches_per_epoch, self.on_error = batches_per_epoch, on_error
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch, self.skipped = 0, {"samples": 0, "shards": 0}
        self._reset_epoch()
        self._it = None

    @property
    def channels(self) -> int:
        return self.manifest.channels

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @classmethod
    def from_config(cls, data, rank: int, world_size: int, seed: int, batch: int, **kw) -> "ShardStream":
        """From a `pipeline.config.DataConfig`; `batch` is this rank's share of the global batch."""
        if data.source != "shards":
            raise GantryError(f"data.source is '{data.source}'; a shard stream needs data.source: shards")
        return cls(data.path, rank=rank, world_size=world_size, seed=seed, batch=batch,
                   loader_workers=data.loader_workers, shuffle_buffer=data.shuffle_buffer,
                   resampled=data.resampled, batches_per_epoch=data.batches_per_epoch,
                   on_error=data.on_error, **kw)

    def _reset_epoch(self):
        self.positions = [0] * max(1, self.loader_workers)
        self.samples = self.batches = 0

    def _epoch_urls(self) -> list[str]:
        if self.resampled:
            return self.shards or [self.manifest.path(e) for e in self.manifest.shards]
        if self.shards is not None:
            urls = list(self.shards)
            random.Random(f"order/{self.seed}/{self.epoch}/{self.rank}").shuffle(urls)
            return urls
        return plan_shards(self.manifest, self.epoch, self.seed, self.world_size)[self.rank]

    def _loader(self):
        data = _EpochData(self.manifest, self._epoch_urls(), tag=f"{self.seed}/{self.epoch}/{self.rank}",
                          batch=self.batch, shuffle_buffer=self.shuffle_buffer,
                          resampled=self.resampled, on_error=self.on_error, start=list(self.positions))
        workers = self.loader_workers
        # A DataLoader without a generator draws its workers' seed from the global torch RNG
        # whenever an iterator starts: a resumed run starts one at a step where the straight run
        # did not, and its latents would then differ from there on.
        seeds = torch.Generator().manual_seed(zlib.crc32(data.tag.encode()))
        return iter(DataLoader(data, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                               worker_init_fn=_worker_init if workers else None, generator=seeds,
                               prefetch_factor=4 if workers else None))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        delivered_any = self.batches > 0
        while True:
            if self.batches_per_epoch is not None and self.batches >= self.batches_per_epoch:
                self._next_epoch()
                delivered_any = False
            if self._it is None:
                self._it = self._loader()
            try:
                item = next(self._it)
            except StopIteration:
                if not delivered_any:
                    raise GantryError(f"rank {self.rank} got no samples in epoch {self.epoch} from "
                                      f"{self.manifest.root} (every shard missing or skipped?)") from None
                self._next_epoch()
                delivered_any = False
                continue
            if "error" in item:
                self.close()
                raise GantryError(item["error"])
            for kind, msg in item["events"]:
                self.skipped[kind + "s"] += 1
                log.warning("skipped %s: %s", kind, msg)
            self.positions[item["worker"]] = item["pos"]
            if item["images"] is None:
                continue
            self.samples += len(item["images"])
            self.batches += 1
            return item["images"], item["conds"]

    def _next_epoch(self):
        self.close()
        self.epoch += 1
        self._reset_epoch()

    def close(self):
        """Stop the loader workers (they restart lazily on the next batch)."""
        self._it = None

    def state_dict(self) -> dict:
        """JSON-able position: epoch, what this epoch delivered, and the skip counters."""
        return {"epoch": self.epoch, "samples": self.samples, "batches": self.batches,
                "positions": list(self.positions), "skipped": dict(self.skipped),
                "geometry": self._geometry()}

    def load_state_dict(self, d: dict) -> None:
        """Continue after the samples `d` recorded. If the stream's shape changed (ranks, loader
        workers, mode), the saved positions mean nothing here: restart that epoch, with a warning."""
        self.close()
        self.epoch, self.skipped = int(d["epoch"]), dict(d["skipped"])
        self._reset_epoch()
        if d.get("geometry") == self._geometry():
            self.positions, self.samples, self.batches = list(d["positions"]), d["samples"], d["batches"]
        else:
            log.warning("data stream shape changed (%s -> %s); restarting epoch %d from its start",
                        d.get("geometry"), self._geometry(), self.epoch)

    def _geometry(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "loader_workers": self.loader_workers,
                "resampled": self.resampled, "batch": self.batch, "shuffle_buffer": self.shuffle_buffer,
                "seed": self.seed}

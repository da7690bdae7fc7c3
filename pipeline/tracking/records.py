"""One logging call as a record: what the tracker queues, the sender uploads and the spool keeps.

Scalar records (metric, param, tag) travel together in `log_batch` calls; files (image, artifact)
travel one per call; `end` (the run's final status) goes last.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import storage

SCALARS = ("metric", "param", "tag")
KINDS = SCALARS + ("image", "artifact", "end")

# MLflow's own limits for one log_batch request (mlflow.utils.validation).
MAX_METRICS, MAX_PARAMS_TAGS, MAX_ENTITIES = 1000, 100, 1000


@dataclass
class Record:
    kind: str  # one of KINDS
    key: str = ""  # metric/param/tag/image key, artifact path under the run, or final status
    value: object = None  # float (metric), str (param, tag), HxWxC uint8 array (image in memory)
    step: int = 0
    ts: int = 0  # milliseconds since the epoch, taken when the trainer logged it
    path: str | None = None  # a file or folder on disk: staged artifact, or spooled image PNG

    def to_json(self) -> str:
        d = asdict(self)
        if self.kind == "image":
            d["value"] = None  # the spool keeps images as PNG files under `path`
        return json.dumps(d)

    @classmethod
    def from_json(cls, line: str) -> "Record":
        d = json.loads(line)
        if d.get("kind") not in KINDS:
            raise ValueError(f"unknown record kind {d.get('kind')!r}")
        return cls(**d)


def take_chunk(queue: deque) -> list[Record]:
    """Pop from the front of `queue` what one upload call carries: a run of scalar records within
    MLflow's batch limits, or a single file/end record."""
    if not queue:
        return []
    if queue[0].kind not in SCALARS:
        return [queue.popleft()]
    chunk: list[Record] = []
    n_metrics = n_other = 0
    while queue and queue[0].kind in SCALARS and len(chunk) < MAX_ENTITIES:
        is_metric = queue[0].kind == "metric"
        if (is_metric and n_metrics == MAX_METRICS) or (not is_metric and n_other == MAX_PARAMS_TAGS):
            break
        n_metrics += is_metric
        n_other += not is_metric
        chunk.append(queue.popleft())
    return chunk


def stage(src: str | os.PathLike, dest: Path) -> Path:
    """Snapshot a file or folder at `dest` by hard links (a copy across file systems), so the
    upload sees the bytes as they were when logged even if the trainer deletes or replaces the
    original (checkpoints are replaced by rename, which leaves a hard link's content intact).
    A remote `src` (a run dir on object storage) is downloaded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not storage.is_local(str(src)):  # on an object store: this copy is the snapshot
        storage.download(str(src), str(dest))
        return dest
    src = Path(src)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link)
    else:
        link(src, dest)
    return dest

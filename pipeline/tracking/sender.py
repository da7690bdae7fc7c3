"""Upload records to one MLflow run, idempotently.

MLflow's `log_batch` is not idempotent: a request that reached the server but whose answer was
lost, sent again, stores every metric twice. So after any failed upload the next attempt first
asks the server what it already holds (`reconcile=True`) and sends only the rest. Params (same
value), tags and artifacts (same path) overwrite themselves and need no such check.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from pipeline.tracking.records import Record

log = logging.getLogger("gantry.tracking")  # gantry.*: warnings reach the console


class Unreachable(Exception):
    """The server did not take the upload (down, timed out, 5xx); the same records may be retried."""


def is_retryable(exc: Exception) -> bool:
    """Connection failures and server-side errors are retryable; a 4xx answer never will pass."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return code >= 500 or code == 429
    return True


def image_prefix(key: str, step: int) -> str:
    """How MlflowClient.log_image names the files of image `key` at `step` (mlflow 3.x)."""
    return f"{re.sub('/', '~', key)}+step+{step}+"


class Sender:
    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        # Steps the server is known to hold, per metric key, so that reconciling many chunks of
        # one key reads its history once. Forgotten after a failure, which leaves it unsure.
        self._stored: dict[str, set[int]] = {}

    def send(self, chunk: list[Record], reconcile: bool) -> None:
        """Upload `chunk` (as taken by `records.take_chunk`). Raises Unreachable if the server did
        not take it; records the server refuses (4xx) are dropped with a warning."""
        try:
            if reconcile:
                chunk = self._not_yet_stored(chunk)
            if chunk:
                self._upload(chunk)
        except Exception as e:
            if is_retryable(e):
                self._stored.clear()
                raise Unreachable(str(e)) from e
            if len(chunk) > 1:
                # Find the one record the server refuses (e.g. a param whose value changed on
                # resume) instead of losing the whole batch with it.
                for rec in chunk:
                    self.send([rec], reconcile=False)
                return
            log.warning("MLflow refused %s %r: %s; dropped", chunk[0].kind, chunk[0].key, e)
            return
        for rec in chunk:
            if rec.kind == "metric" and rec.key in self._stored:
                self._stored[rec.key].add(rec.step)
            if rec.kind == "artifact" and rec.path:
                _remove(rec.path)  # the staged snapshot is uploaded: free its disk space

    def _upload(self, chunk: list[Record]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        rec = chunk[0]
        if rec.kind == "image":
            image = rec.value if rec.value is not None else _read_png(rec.path)
            self.client.log_image(self.run_id, image, key=rec.key, step=rec.step, timestamp=rec.ts)
        elif rec.kind == "artifact":
            if Path(rec.path).is_dir():
                self.client.log_artifacts(self.run_id, rec.path, rec.key or None)
            else:
                self.client.log_artifact(self.run_id, rec.path, rec.key or None)
        elif rec.kind == "end":
            self.client.set_terminated(self.run_id, status=rec.key)
        else:
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(r.key, float(r.value), r.ts, r.step) for r in chunk if r.kind == "metric"],
                params=[Param(r.key, str(r.value)) for r in chunk if r.kind == "param"],
                tags=[RunTag(r.key, str(r.value)) for r in chunk if r.kind == "tag"],
                synchronous=True,
            )

    def _not_yet_stored(self, chunk: list[Record]) -> list[Record]:
        """`chunk` minus the metric points and images the server already holds."""
        stored = self._stored
        for key in {r.key for r in chunk if r.kind == "metric"} - stored.keys():
            stored[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        images = [r for r in chunk if r.kind == "image"]
        names = [Path(f.path).name for f in self.client.list_artifacts(self.run_id, "images")] if images else []
        return [
            r
            for r in chunk
            if not (r.kind == "metric" and r.step in stored[r.key])
            and not (r.kind == "image" and any(n.startswith(image_prefix(r.key, r.step)) for n in names))
        ]


def _remove(path: str) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def _read_png(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))

"""The MLflow tracker: one MLflow run per training job, logged from a background thread.

Every logging call only appends records to an in-memory queue; a worker thread uploads them in
batches (`log_batch`, up to 1000 metric points per request). If the server goes away the trainer
does not notice: the worker warns once, keeps at most `cfg.backlog` records plus the batch in
flight (dropping the oldest metric points beyond that, counted and reported), and flushes when
the server is back. If it is still down at `close()`, whatever is left goes to a local spool that `gantry tracking sync PATH`
uploads later. Uploads after a failure are reconciled with the server (see `sender`), so a
metric step is stored once, however often it was retried.

Contract with the trainer: metric steps must increase per key, and a resumed run starts at
`start_step` (one past the last step logged before). A point that breaks this is dropped with
a warning, never stored twice.

Only the run's creation talks to the server synchronously: if it cannot be reached then,
`MLflowTracker(...)` raises GantryError before any training has been done.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.tracking import Tracker, spool, store
from pipeline.tracking.records import Record, stage, take_chunk
from pipeline.tracking.sender import Sender, Unreachable, is_retryable

log = logging.getLogger("gantry.tracking")  # gantry.*: warnings reach the console

SYSTEM_PREFIX = "system/"  # MLflow's system metrics: their own steps, not the trainer's
MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values


class MLflowTracker(Tracker):
    """Args:
        cfg: the run's `tracking` section (uri, experiment, backlog).
        run_name: shown in the MLflow UI and in `gantry history`.
        resume_run_id: continue this run (same id) instead of starting a new one.
        tags: set on the run when it starts.
        spool_dir: where records left unsent at close are kept (default `./mlflow-spool`);
            artifacts are staged there too, so keep it on the file system of the checkpoints.
        spool_to: a storage location (the run dir's `mlflow-spool` on an object store) where a
            spool left at close is published, and where a resumed run looks for one: the
            node's own disk may be gone by then.
        flush_interval: seconds between upload rounds; what was logged meanwhile is batched.
        close_timeout: how long close() keeps retrying an unreachable server before spooling.
        system_metrics: also log MLflow's CPU/memory/disk/network metrics (`system/...`).
    """

    def __init__(
        self,
        cfg,
        run_name: str | None = None,
        resume_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        spool_dir: str | os.PathLike | None = None,
        spool_to: str | None = None,
        flush_interval: float = 1.0,
        close_timeout: float = 10.0,
        system_metrics: bool = True,
    ):
        from mlflow import MlflowClient

        self.uri = store.resolve_uri(cfg.uri)
        self.client = MlflowClient(self.uri)
        self.backlog = cfg.backlog
        self.spool_dir = Path(spool_dir or "mlflow-spool")
        self.spool_to = spool_to
        self.flush_interval = flush_interval
        self.close_timeout = close_timeout
        self.dropped = 0  # metric points dropped because the backlog was full

        _http_settings.acquire()
        try:
            run = self._open_and_sync(cfg.experiment, run_name or cfg.run_name, resume_run_id, tags)
        except BaseException:
            _http_settings.release()
            raise
        self.run_id = run.info.run_id
        steps = [m.step for m in run.data._metric_objs if not m.key.startswith(SYSTEM_PREFIX)]
        self.start_step = max(steps) + 1 if steps else 0
        # MLflow refuses to change a param: a resumed run keeps the values it started with (a
        # sweep's trial that took over another's checkpoint logs its new values as metrics).
        self._params = set(run.data.params)

        self._last_step: dict[str, int] = {}
        self._warned_keys: set[str] = set()
        # Staged snapshots of a resumed run share its spool with what an interrupted process left
        # there unsent, so their names are this process's own.
        self._names = (f"staged-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())
        self._queue: deque[Record] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._closed = False
        self._deadline = float("inf")
        self._warned_down = self._warned_full = False
        self._sender = Sender(self.client, self.run_id)
        self._worker = threading.Thread(target=self._work, name="gantry-mlflow", daemon=True)
        self._worker.start()
        self._monitor = self._start_system_metrics(resumed=resume_run_id is not None) if system_metrics else None

    # ---- the trainer's side: never blocks on the network ----

    def log_params(self, params: Mapping[str, object]) -> None:
        """Nested mappings are flattened to dotted keys (`model.arch`); keys the run already has
        keep their value."""
        self._enqueue([Record("param", k, str(v)[:MAX_PARAM_CHARS]) for k, v in _flatten(params) if k not in self._params])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = _now_ms()
        records = []
        for key, value in metrics.items():
            last = self._last_step.get(key, self.start_step - 1)
            if step <= last:
                if key not in self._warned_keys:
                    self._warned_keys.add(key)
                    log.warning("metric %r: step %d is not after step %d, already logged; such points are dropped", key, step, last)
                continue
            self._last_step[key] = step
            records.append(Record("metric", key, float(value), step, ts))
        self._enqueue(records)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """image: HxWxC uint8, C in (1, 3, 4); shown under the run's Images tab at `step`."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"log_image({key!r}) wants an HxWxC uint8 array with C in 1/3/4, got {image.dtype} {image.shape}")
        self._enqueue([Record("image", key, image[..., 0].copy() if image.shape[2] == 1 else image.copy(), step, _now_ms())])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """A file goes into `artifact_path/`; a folder's *contents* go to `artifact_path`
        (so logging each new checkpoint folder to `checkpoints/latest` replaces the last one).
        The bytes are snapshotted now (hard links), so the trainer may delete `path` or replace
        its files by rename right after; rewriting a file in place would change the snapshot."""
        if storage.is_local(path) and not Path(path).exists():
            raise GantryError(f"cannot log artifact {path}: no such file or folder")
        staged = stage(path, spool.files_dir(self.spool_dir, self.run_id) / next(self._names) / storage.basename(path))
        self._enqueue([Record("artifact", artifact_path or "", path=str(staged))])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._enqueue([Record("tag", k, str(v)) for k, v in tags.items()])

    def close(self, status: str = "FINISHED") -> None:
        """Flush everything and end the run with `status` (FINISHED, FAILED or KILLED). If the
        server stays unreachable for `close_timeout` s, spool what is left and say where."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.finish()
        self._enqueue([Record("end", status)])
        with self._cond:
            self._deadline = time.monotonic() + self.close_timeout
            self._closing.set()
            self._cond.notify()
        # Bounded: every failed upload checks the deadline, every successful one is progress.
        self._worker.join()
        _http_settings.release()
        with self._cond:
            left, self._queue = list(self._queue), deque()
        if not left:
            shutil.rmtree(spool.files_dir(self.spool_dir, self.run_id), ignore_errors=True)
            with contextlib.suppress(OSError):
                self.spool_dir.rmdir()  # only if no other run left a spool there
        else:
            path = spool.write(self.spool_dir, self.run_id, self.uri, left)
            if self.spool_to:
                path = spool.publish(self.spool_dir, self.run_id, self.spool_to)
            log.warning("MLflow at %s still unreachable: %d records of run %s kept in %s; upload them with `gantry tracking sync %s`", self.uri, len(left), self.run_id, path, path)
        if self.dropped:
            log.warning("tracking backlog overflowed: %d metric points were dropped", self.dropped)

    # ---- the worker's side ----

    def _enqueue(self, records: list[Record]) -> None:
        if not records:
            return
        if self._closed and records[0].kind != "end":
            raise RuntimeError("tracker is closed")
        with self._cond:
            self._queue.extend(records)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Hold the backlog bound by dropping the oldest metric points (params, tags, images and
        artifacts are few and kept). The batch in flight is not counted: it cannot be trimmed
        while it is sent, and trimming the queue for it would drop the newest points instead;
        if its upload fails it returns to the front of the queue and is trimmed first."""
        excess = len(self._queue) - self.backlog
        if excess <= 0:
            return
        kept = deque()
        for rec in self._queue:
            if excess > 0 and rec.kind == "metric":
                excess -= 1
                self.dropped += 1
            else:
                kept.append(rec)
        self._queue = kept
        if not self._warned_full:
            self._warned_full = True
            log.warning("tracking backlog full (%d records): dropping the oldest metric points until MLflow at %s takes them", self.backlog, self.uri)

    def _work(self) -> None:
        reconcile = False  # after a failure the server may hold part of what we sent
        backoff = 0.5
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing.is_set())
                if not self._queue:
                    return  # closing, and everything went through
                chunk = take_chunk(self._queue)
            try:
                self._sender.send(chunk, reconcile)
            except Unreachable as e:
                with self._cond:
                    # Back to the front of the queue, where the backlog bound can trim it too.
                    self._queue.extendleft(reversed(chunk))
                    self._trim()
                if not self._warned_down:
                    self._warned_down = True
                    log.warning("MLflow at %s unreachable (%s); training continues, up to %d records are held and sent when it is back", self.uri, e, self.backlog)
                reconcile = True
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return  # close() spools the rest
                # Sleep through the backoff unless close() starts its countdown meanwhile.
                pause = min(backoff, remaining)
                (time.sleep if self._closing.is_set() else self._closing.wait)(pause)
                backoff = min(2 * backoff, 5.0)
                continue
            with self._cond:
                idle = not self._queue
            if reconcile:
                log.info("MLflow at %s reachable again; sending the backlog", self.uri)
            reconcile, backoff = False, 0.5
            if idle:
                self._closing.wait(self.flush_interval)  # let the next batch gather

    # ---- setup ----

    def _open_and_sync(self, experiment: str, run_name: str | None, resume_run_id: str | None, tags):
        """Open the run, upload what an earlier session of it left in a spool; returns the run."""
        run = _with_retries(lambda: self._open_run(experiment, run_name, resume_run_id, tags), self.uri)
        leftover = self.spool_dir / f"{run.info.run_id}.jsonl"
        published = storage.join(self.spool_to, leftover.name) if self.spool_to else None
        if leftover.exists():  # an earlier session of this run closed while the server was down
            spool.sync(leftover, self.uri)
            run = self.client.get_run(run.info.run_id)
        if published and storage.exists(published):  # the same, on another node
            spool.sync_url(published, self.uri)
            run = self.client.get_run(run.info.run_id)
        return run

    def _open_run(self, experiment: str, run_name: str | None, resume_run_id: str | None, tags):
        from mlflow.exceptions import MlflowException

        if resume_run_id is None:
            exp_id = store.experiment_id(self.client, experiment, self.uri)
            return self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        try:
            run = self.client.get_run(resume_run_id)
        except MlflowException as e:
            if is_retryable(e):
                raise
            raise GantryError(f"cannot resume MLflow run {resume_run_id!r} at {self.uri}: no such run") from None
        self.client.update_run(resume_run_id, status="RUNNING")
        for k, v in (tags or {}).items():
            self.client.set_tag(resume_run_id, k, v)
        return run

    def _start_system_metrics(self, resumed: bool):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # It announces every start and stop at INFO on the console; only its warnings matter.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=self.uri)
        monitor.start()
        return monitor


class _HttpSettings:
    """This worker retries (and reconciles) by itself; MLflow's own HTTP retries would resend a
    half-delivered log_batch blindly and keep the worker waiting for minutes per call. MLflow
    reads these settings per request from the environment, so they are process-wide: they hold
    while any tracker is open and are put back after the last one closes, so that later MLflow
    calls in the process (a registry download after training) keep MLflow's own retries."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved: dict[str, str | None] = {}

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
                os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # a timeout the user set stands
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for k, v in self._saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


_http_settings = _HttpSettings()


def _with_retries(fn, uri: str, timeout: float = 15.0):
    """Run `fn` (which talks to the server), retrying while the server is unreachable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except GantryError:
            raise
        except Exception as e:
            if not is_retryable(e):
                raise GantryError(f"MLflow tracking at {uri} refused to open the run: {e}") from None
            if time.monotonic() > deadline:
                raise GantryError(f"MLflow tracking at {uri} is unreachable: {e}") from None
            time.sleep(1.0)


def _flatten(params: Mapping, prefix: str = ""):
    for k, v in params.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _now_ms() -> int:
    return int(time.time() * 1000)

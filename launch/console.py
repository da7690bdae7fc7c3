"""The driver's console while a run trains: the lines a person reads, and a log file for the rest.

Inside `Console`, this process's stdout and stderr are pipes at the file-descriptor level, so
whatever is written to fds 1 and 2 passes through here: Python's prints and logging, Ray's C++
core, Ray's relay of every worker's output, MLflow, DeepSpeed, and the subprocesses this process
starts. Every line goes to the log file. Lines that start with `gantry: ` (pipeline/console.py)
also go to the console, on the stream they came on, with Ray's `(RayTrainWorker pid=…)` prefix
removed; nothing else does. Progress lines are redrawn in place on a terminal; elsewhere (CI
logs, `ray job logs`) the first is printed, then at most one per PLAIN_PROGRESS_EVERY_S (the
run's last line, `summary`, says where it ended). At the end the log is copied into the run dir (`<run dir>/logs/`, on an object store
when the run dir is), so it is kept with the run's checkpoints and samples wherever the driver
ran. `verbose` turns all of this off: everything is printed as it comes, nothing is logged.
"""
from __future__ import annotations

import os
import re
import select
import sys
import tempfile
import threading
import time

from pipeline.config import RunConfig
from pipeline.console import PREFIX, PROGRESS, duration

PLAIN_PROGRESS_EVERY_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\([^()]*pid=[^()]*\) ?")
RAY_REPEATED = re.compile(r" \[repeated \d+x across cluster\]")  # Ray's dedup: shown already
DRAIN_S = 1.0  # at exit, how long the pipes may stay quiet before the console stops reading
CLOSE_WAIT_S = 5.0  # and how long it reads at most, should a leftover child keep writing


def console_line(raw: str) -> str | None:
    """The console line inside one line of output, or None if it is not one."""
    line = RAY_PREFIX.sub("", ANSI.sub("", raw))
    return line if line.startswith(PREFIX) and not RAY_REPEATED.search(line) else None


class Console:
    def __init__(self, log_path: str, publish_to: str | None = None, verbose: bool = False):
        """`log_path`: this machine's log file; `publish_to`: where it is copied at the end."""
        self.log_path, self.publish_to, self.verbose = log_path, publish_to, verbose
        self.location: str | None = None  # where the log is once the console closed
        self.started = time.monotonic()
        self.bar: str | None = None  # the latest progress line
        self.last_plain = 0.0

    @classmethod
    def for_run(cls, cfg: RunConfig, command: str, verbose: bool = False, rank: int = 0) -> Console:
        """`rank`: this process's rank when torchrun started one per rank (each keeps its own log)."""
        from pipeline import storage
        from pipeline.worker import run_dir_for

        name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-rank{rank}" if rank else "")
        local = os.path.join(tempfile.gettempdir(), "gantry-logs", f"{cfg.name}-{name}-{os.getpid()}.log")
        return cls(local, storage.join(run_dir_for(cfg), "logs", f"{name}.log"), verbose)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Console:
        if self.verbose or not (_open(1) and _open(2) and sys.stdout and sys.stderr):
            self.verbose = True  # nowhere to show lines (a closed stdout): print as before
            return self
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        # Line-buffered: a driver that dies hard (SIGKILL, abort) keeps every line it got.
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout.flush(), sys.stderr.flush()
        self.line_buffering = sys.stdout.line_buffering
        self.sinks = {fd: os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace") for fd in (1, 2)}
        self.tty = self.sinks[1].isatty()
        self.closing, self.closed_at = threading.Event(), None
        self.saved, self.pipes = {}, {}
        try:
            for fd in (1, 2):
                r, w = os.pipe()
                self.pipes[r] = fd
                self.saved[fd] = os.dup(fd)
                os.dup2(w, fd)
                os.close(w)
            sys.stdout.reconfigure(line_buffering=True)  # a pipe now: no lines held back in Python
            self.thread = threading.Thread(target=self._pump, name="gantry-console", daemon=True)
            self.thread.start()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.verbose:
            return
        try:
            self._restore()  # first: whatever happens from here on is printed, not lost
            self.closing.set()
            self.thread.join()
        finally:  # even when a second Ctrl-C lands during the join
            if self.bar and self.tty:
                self._write(1, "\n")
            for sink in self.sinks.values():
                _quietly(sink.close)
            _quietly(self.log.close)
            self.location = self._publish()

    def _restore(self) -> None:
        _quietly(sys.stdout.flush), _quietly(sys.stderr.flush)
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved = {}
        sys.stdout.reconfigure(line_buffering=self.line_buffering)

    def _publish(self) -> str:
        """The log's final location: the run dir's copy, or this machine's file if that failed
        (the run dir's store may be what failed the run)."""
        if not self.publish_to:
            return self.log_path
        from pipeline import storage

        try:
            with open(self.log_path, "rb") as f:
                storage.write_bytes(self.publish_to, f.read())
        except Exception:
            return self.log_path
        os.remove(self.log_path)
        return self.publish_to

    # ---- the pump -----------------------------------------------------------------------

    def _pump(self) -> None:
        """Never stops before the console closes, whatever fails: a dead pump would leave
        every process of the run blocked on a full pipe."""
        partial = {r: b"" for r in self.pipes}
        quiet_since = None
        while self.pipes:
            ready, _, _ = select.select(list(self.pipes), [], [], 0.1)
            if self.closing.is_set():
                now = time.monotonic()
                self.closed_at = self.closed_at or now
                quiet_since = quiet_since or now
                if now - quiet_since > DRAIN_S or now - self.closed_at > CLOSE_WAIT_S:
                    break
            if not ready:
                continue
            quiet_since = None
            for r in ready:
                chunk = os.read(r, 65536)
                if chunk:
                    *lines, partial[r] = (partial[r] + chunk).split(b"\n")
                    for line in lines:
                        self._line(line, self.pipes[r])
                else:  # every writer has closed it
                    self._close_pipe(r, partial.pop(r))
        for r in list(self.pipes):
            self._close_pipe(r, partial[r])

    def _close_pipe(self, r: int, rest: bytes) -> None:
        fd = self.pipes.pop(r)
        if rest:
            self._line(rest, fd)
        os.close(r)

    def _line(self, raw: bytes, fd: int) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        # when the driver got it: Ray's relayed lines carry no time
        _quietly(self.log.write, f"{time.strftime('%H:%M:%S')} {text}\n")
        line = console_line(text)
        if line is None:
            return
        if line.startswith(PROGRESS):
            self._progress(line[len(PREFIX):])
        else:
            self._show(line, fd)

    def _show(self, line: str, fd: int) -> None:
        if self.tty and self.bar:
            self._write(1, "\r\x1b[K")
        self._write(fd, line + "\n")
        if self.tty and self.bar:
            self._draw()

    def _progress(self, line: str) -> None:
        self.bar = PREFIX + line
        if self.tty:
            self._draw()
            return
        now = time.monotonic()
        if now - self.last_plain >= PLAIN_PROGRESS_EVERY_S:
            self.last_plain = now
            self._write(1, self.bar + "\n")

    def _draw(self) -> None:
        try:
            width = os.get_terminal_size(self.sinks[1].fileno()).columns or 100  # 0: size unknown
        except (OSError, ValueError):
            width = 100
        self._write(1, "\r\x1b[K" + self.bar[:max(width - 1, 20)])  # a wrapped line cannot be redrawn

    def _write(self, fd: int, text: str) -> None:
        """To the console; a console that went away (a closed pipe, `| head`) is dropped."""
        sink = self.sinks[fd]
        try:
            sink.write(text)
            sink.flush()
        except (OSError, ValueError):
            self.sinks[fd] = open(os.devnull, "w")


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except (OSError, ValueError):
        pass


def summary(cfg: RunConfig, console: Console) -> str:
    """The run's last line: how long, how far, its last evaluation, where its files are."""
    from pipeline import checkpoint, storage
    from pipeline.errors import GantryError
    from pipeline.worker import run_dir_for

    run_dir = run_dir_for(cfg)
    try:
        latest = checkpoint.latest_checkpoint(storage.join(run_dir, "checkpoints"))
        meta = checkpoint.read_meta(latest) if latest else {}
    except (GantryError, OSError):  # the run is done and saved; its last line leaves out what it cannot read
        meta = {}
    line = f"{PREFIX}finished {cfg.name} in {duration(console.elapsed)}"
    if meta:
        line += f" at kimg {meta['kimg']:.2f}"
    if meta.get("eval"):
        line += ": " + ", ".join(f"{k} {v:.4g}" for k, v in meta["eval"].items())
    line += f"; run dir {run_dir}"
    return line + (f"; log {console.location}" if console.location else "")

"""What a run says to the person at the console: lines that start with `gantry: `.

Any process of a run (a Ray worker, the driver, the local launcher) prints them to its stdout
or stderr; the driver (launch/console.py) shows those lines and sends everything else the
run's processes print (Ray, MLflow, DeepSpeed, library tracebacks) to the run's log file.
Progress lines are marked so a terminal can redraw them in place.
"""
from __future__ import annotations

import logging
import sys

PREFIX = "gantry: "
PROGRESS = PREFIX + "progress "


_speaker = ""  # set by speak_for: this process's lines belong in the log, not on the console


def speak_for(name: str) -> None:
    """From now on this process's lines read `<name>: …` and stay out of the console (which
    shows `gantry: ` lines only) but land in the driver's log: a sweep's trials, whose driver
    prints one line per trial for them."""
    global _speaker
    _speaker = name


def say(message: str) -> None:
    print(f"{_speaker}: {message}" if _speaker else PREFIX + message, flush=True)


def progress(message: str) -> None:
    if not _speaker:
        print(PROGRESS + message, flush=True)


class _WarningLine(logging.StreamHandler):
    def __init__(self):
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)

    def format(self, record) -> str:
        return f"{_speaker}: warning: {record.getMessage()}" if _speaker else f"{PREFIX}warning: {record.getMessage()}"


def show_warnings() -> None:
    """Warnings of gantry's own loggers (`gantry.*`: skipped records, MLflow unreachable, a full
    tracking backlog) are ones a user acts on: they become console lines. Idempotent."""
    logger = logging.getLogger("gantry")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        logger.addHandler(_WarningLine())


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

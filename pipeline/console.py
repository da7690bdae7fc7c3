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


def say(message: str) -> None:
    print(PREFIX + message, flush=True)


def progress(message: str) -> None:
    print(PROGRESS + message, flush=True)


class _WarningLine(logging.StreamHandler):
    def __init__(self):
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter(PREFIX + "warning: %(message)s"))


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

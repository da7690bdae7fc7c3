"""The `gantry` command. Each sub-command lives in `launch/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser with `set_defaults(func=run)`; `run(args)`
returns the exit code. Heavy imports stay inside `run` so `gantry --help` is instant.

Exit codes: 0 done; 2 config or usage error, before any work starts; 1 failure while working
(a GantryError, printed as one line); 130 interrupted (Ctrl-C, SIGINT); 143 terminated
(SIGTERM: what `gantry jobs stop` (through Ray), Kubernetes and `kill` send).

SIGTERM ends a command the way Ctrl-C does, not by the signal's default (instant death): it
raises `Terminated` (a KeyboardInterrupt) in the main thread, so every `finally` and exit stack
runs (a training run closes its tracking as KILLED and shuts its strategy down; its
DataLoader workers end) and the command exits 143 promptly. A second SIGTERM during that
cleanup ends the process at once. (`ray.init` installs Ray's own SIGTERM handler, sys.exit(15),
in a process that starts or joins Ray as a driver.)
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time

from pipeline.config import ConfigError
from pipeline.errors import GantryError

# torchrun and accelerate launch stop every process of a group as soon as one of them exits. A bad
# launch is found by every rank alike (each reads the same config and environment); the rank
# that finds it first waits this long before exiting, so that the others print their line too
# instead of "terminated".
PEER_GRACE_S = 3.0

COMMANDS = ["train", "eval", "sample", "translate", "export", "shards", "history", "ui", "tracking", "register", "k8s", "submit", "jobs", "retrain", "sweep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantry", description="Distributed GAN training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"launch.commands.{name}").register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that code written for Ctrl-C treats it as a stop
    (pipeline/worker.py closes tracking as KILLED; torch's DataLoader workers exit quietly) and
    `except Exception` cannot swallow it."""


_sigterm_seen = False  # a library that catches the stop and raises its own interrupt keeps exit 143


def _terminate(signum, frame) -> None:
    global _sigterm_seen
    _sigterm_seen = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _handle_sigterm():
    """Install `_terminate` for SIGTERM; returns the previous handler, or None where it was not
    installed: off the main thread (Python allows handlers only there), or where SIGTERM is
    ignored on purpose (SIG_IGN is kept, as Python keeps an ignored SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return None
    signal.signal(signal.SIGTERM, _terminate)
    return signal.SIG_DFL if previous is None else previous  # None: a handler set outside Python


def _error_line(message: str) -> None:
    """One write for the whole line: the ranks of a torchrun group share one stderr pipe, and
    print's separate write of the newline let their lines run together."""
    sys.stderr.write(f"gantry: {message}\n")
    sys.stderr.flush()


def _let_peers_report() -> None:
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return
    try:
        time.sleep(PEER_GRACE_S)
    except KeyboardInterrupt:  # the launcher stopping this rank: its line is out already
        pass


def main(argv: list[str] | None = None) -> int:
    # Without this a SIGTERM killed `gantry train` mid-step: no tracking close, no cleanup.
    # Restored on return, so calling main() inside another program leaves its handler alone.
    previous = _handle_sigterm()
    # MLflow draws a progress bar per artifact download (register, retrain, sample): chatter.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # Dotted overrides may come after options too (`gantry train c.yaml --resume latest a.b=1`).
        if extra:
            if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides += extra
        return int(args.func(args) or 0)
    except ConfigError as e:
        _error_line(f"config error: {e}")
        _let_peers_report()
        return 2
    except GantryError as e:
        _error_line(str(e))
        _let_peers_report()
        return 1
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated) or _sigterm_seen:
            _error_line("terminated (SIGTERM)")
            return 143
        _error_line("interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

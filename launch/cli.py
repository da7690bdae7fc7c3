"""The `gantry` command. Each sub-command lives in `launch/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser with `set_defaults(func=run)`; `run(args)`
returns the exit code. Heavy imports stay inside `run` so `gantry --help` is instant."""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.config import ConfigError
from pipeline.errors import GantryError

COMMANDS = ["train", "eval", "sample", "shards", "history", "ui", "tracking", "register", "k8s", "submit", "jobs", "retrain"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantry", description="Distributed GAN training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"launch.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Dotted overrides may come after options too (`gantry train c.yaml --resume latest a.b=1`).
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"gantry: config error: {e}", file=sys.stderr)
        return 2
    except GantryError as e:
        print(f"gantry: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gantry: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

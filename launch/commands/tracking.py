"""`gantry tracking sync PATH`: upload what a tracker spooled while MLflow was unreachable.

PATH is a spool file (`<run_id>.jsonl`) or a folder of them (a run's `mlflow-spool/`). Each is
uploaded to the run it belongs to, then deleted; running it again after a partial failure
stores nothing twice.
"""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("tracking", help="MLflow tracking chores")
    sub = p.add_subparsers(dest="tracking_command", required=True)
    s = sub.add_parser("sync", help="upload spooled records to MLflow")
    s.add_argument("path", type=Path, help="a spool .jsonl file or a folder of them")
    s.add_argument("--uri", help="tracking URI (default: the one the spool was written for)")
    s.set_defaults(func=run)


def run(args) -> int:
    from pipeline.errors import GantryError
    from pipeline.tracking import spool

    files = sorted(args.path.glob("*.jsonl")) if args.path.is_dir() else [args.path]
    if not files:
        raise GantryError(f"no spool files (*.jsonl) in {args.path}")
    for path in files:
        n = spool.sync(path, args.uri)
        print(f"uploaded {n} records from {path}")
    return 0

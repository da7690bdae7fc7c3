"""`gantry tracking sync PATH`: upload what a tracker spooled while MLflow was unreachable.

PATH is a spool file (`<run_id>.jsonl`) or a folder of them (a run's `mlflow-spool/`), on this
disk or on an object store (where a run whose run dir is there publishes it). Each is uploaded
to the run it belongs to, then deleted; running it again after a partial failure stores nothing
twice.
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("tracking", help="MLflow tracking chores")
    sub = p.add_subparsers(dest="tracking_command", required=True)
    s = sub.add_parser("sync", help="upload spooled records to MLflow")
    s.add_argument("path", help="a spool .jsonl file or a folder of them (a path or a URL)")
    s.add_argument("--uri", help="tracking URI (default: the one the spool was written for)")
    s.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pipeline import storage
    from pipeline.errors import GantryError
    from pipeline.tracking import spool

    if storage.is_local(args.path):
        local = Path(storage.local_path(args.path))
        files = sorted(local.glob("*.jsonl")) if local.is_dir() else [local]
        upload = spool.sync
    else:
        url = args.path.rstrip("/")
        files = [url] if url.endswith(".jsonl") else \
            [storage.join(url, n) for n in storage.list_names(url) if n.endswith(".jsonl")]
        upload = spool.sync_url
    if not files:
        raise GantryError(f"no spool files (*.jsonl) in {args.path}")
    for path in files:
        n = upload(path, args.uri)
        print(f"uploaded {n} records from {path}")
    return 0

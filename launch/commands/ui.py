"""`gantry ui`: the MLflow UI on the project's tracking store, until Ctrl-C.

The default store is the local one training writes to (`sqlite:///mlruns.db`, artifacts in
`./mlartifacts`). A server URI already serves its own UI, so for one `gantry ui` just says where.
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="open the MLflow UI on the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.errors import GantryError
    from pipeline.tracking.store import artifact_root, resolve_uri

    uri = resolve_uri(args.uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is an MLflow server; its UI is at that address")
        return 0
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if artifact_root(uri):
        # Experiments created by gantry already point there; this covers ones made in the UI.
        cmd += ["--default-artifact-root", artifact_root(uri)]
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # lean: no job runner
    try:
        return subprocess.call(cmd, env=env)
    except FileNotFoundError:
        raise GantryError(f"cannot start the MLflow UI: {cmd[0]} not found") from None

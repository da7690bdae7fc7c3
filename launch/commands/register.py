"""`gantry register RUN_ID --name NAME [--alias champion]`: the run's G_ema as a registered model.

Reads the checkpoint the run logged (artifact `checkpoints/latest`, or `checkpoints/best`),
logs G_ema as an MLflow model on that run and registers it as a new version of NAME, optionally
pointing an alias at it (launch/registry.py). `gantry sample models:/NAME@champion` then loads it.
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("register", help="register a run's generator in the MLflow model registry")
    p.add_argument("run_id", help="MLflow run id")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest", help="which logged checkpoint")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def run(args) -> int:
    from launch.registry import register_run
    from pipeline.tracking.store import resolve_uri

    version = register_run(resolve_uri(args.uri), args.run_id, args.name, args.alias, args.checkpoint)
    print(f"registered {args.name} version {version} from run {args.run_id} (checkpoints/{args.checkpoint})"
          + (f" as @{args.alias}" if args.alias else ""))
    return 0

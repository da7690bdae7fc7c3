"""`gantry register RUN_ID --name NAME [--alias champion]`: the run's G_ema as a registered model.

Reads the checkpoint the run logged (artifact `checkpoints/latest`, or `checkpoints/best`),
logs G_ema as an MLflow PyTorch model on that run and registers it as a new version of NAME,
optionally pointing an alias at it. `gantry sample models:/NAME@champion` then loads it. The
`models` package travels with the model (code_paths), so loading needs no gantry checkout.
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
    import tempfile
    from pathlib import Path

    import mlflow
    import torch
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import models
    from pipeline.checkpoint import load_generator
    from pipeline.errors import GantryError
    from pipeline.tracking.store import resolve_uri

    uri = resolve_uri(args.uri)
    client = MlflowClient(uri)
    try:
        client.get_run(args.run_id)
    except MlflowException as e:
        raise GantryError(f"no MLflow run {args.run_id!r} at {uri} ({e.message.splitlines()[0]})") from None
    artifact = f"checkpoints/{args.checkpoint}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(args.run_id, artifact, tmp)
        except (MlflowException, OSError):
            raise GantryError(f"run {args.run_id} has no checkpoint artifact {artifact!r}") from None
        G, cfg = load_generator(local)
    # log_model checks the example by running it; a batch of one breaks BatchNorm-style layers.
    example = torch.randn(2, cfg.model.z_dim, generator=torch.Generator().manual_seed(0)).numpy()
    mlflow.set_tracking_uri(uri)
    info = mlflow.pytorch.log_model(
        G,
        name="G_ema",
        run_id=args.run_id,
        input_example=example,
        metadata={"config": cfg.model_dump(mode="json")},  # latent size, data and metrics for sample/eval
        registered_model_name=args.name,
        code_paths=[str(Path(models.__file__).parent)],
        # Inferring requirements imports the model in a subprocess; we know them.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
    version = info.registered_model_version
    if args.alias:
        client.set_registered_model_alias(args.name, args.alias, version)
    print(f"registered {args.name} version {version} from run {args.run_id} ({artifact})"
          + (f" as @{args.alias}" if args.alias else ""))
    return 0

"""The MLflow model registry: register a run's generator, load one back.

`gantry register`, `gantry retrain`, `gantry sample` and `gantry eval` all go through here.
Registered models are torch.export programs (MLflow's pt2 format, no pickle); the run config
rides in the model's metadata, so sampling and evaluating need nothing else.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.errors import GantryError

CHAMPION = "champion"  # the alias `gantry retrain` moves to the model version that wins


def register_run(uri: str, run_id: str, name: str, alias: str | None = None, checkpoint: str = "latest") -> str:
    """Log the G_ema of run `run_id`'s logged checkpoint (`checkpoints/<checkpoint>`) as an
    MLflow model on that run, register it as a new version of `name`, point `alias` at it;
    returns the version. The `models` package travels with the model (code_paths), so
    loading it needs no gantry checkout."""
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import models
    from pipeline.checkpoint import load_generator, read_meta

    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        raise GantryError(f"no MLflow run {run_id!r} at {uri} ({e.message.splitlines()[0]})") from None
    with tempfile.TemporaryDirectory() as tmp:
        local = download_checkpoint(client, run_id, f"checkpoints/{checkpoint}", tmp)
        G, cfg = load_generator(local)
        names = read_meta(local).get("class_names") if cfg.model.conditional else None
    # log_model checks the example by running it; a batch of one breaks BatchNorm-style layers.
    gen = torch.Generator().manual_seed(0)
    m = cfg.model
    example = (torch.rand(2, m.input_channels, m.resolution, m.resolution, generator=gen) * 2 - 1 if cfg.is_translation
               else torch.randn(2, m.z_dim, generator=gen)).numpy()
    signature = None
    if cfg.model.conditional:  # the exported program takes (z, labels), which MLflow cannot infer
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec
        example = (example, np.arange(2, dtype=np.int64))
        with torch.no_grad():
            out = G(*(torch.from_numpy(x) for x in example))
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, cfg.model.z_dim), "z"),
                           TensorSpec(np.dtype(np.int64), (-1,), "labels")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *out.shape[1:]))]))
    metadata = {"config": cfg.model_dump(mode="json")}  # latent size, data and metrics for sample/eval
    if cfg.is_translation:  # what `gantry translate` and a model browser read: image in, image out
        metadata["task"] = {"kind": "translation", "input": [m.input_channels, m.resolution, m.resolution],
                            "output": [G.channels, m.resolution, m.resolution]}
    if names:
        metadata["class_names"] = names
    mlflow.set_tracking_uri(uri)
    info = mlflow.pytorch.log_model(
        G,
        name="G_ema",
        run_id=run_id,
        input_example=example,
        signature=signature,
        metadata=metadata,
        registered_model_name=name,
        code_paths=[str(Path(models.__file__).parent)],
        # Inferring requirements imports the model in a subprocess; we know them.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def download_checkpoint(client, run_id: str, artifact: str, dest: str) -> str:
    """Run `run_id`'s logged checkpoint folder `artifact`, downloaded under `dest`; returns its
    local path. A checkpoint the run never logged and a download that failed say which."""
    from mlflow.exceptions import MlflowException

    try:
        return client.download_artifacts(run_id, artifact, dest)
    except (MlflowException, OSError) as e:
        failure = e
    try:
        logged = bool(client.list_artifacts(run_id, artifact))
    except (MlflowException, OSError):
        logged = True  # cannot tell: report the download's own failure
    if not logged:
        raise GantryError(f"run {run_id} has no checkpoint artifact {artifact!r}")
    cause = str(failure).strip().splitlines()[-1][:300]
    raise GantryError(f"downloading checkpoint artifact {artifact!r} of run {run_id} failed: {cause}")


def load_generator_from(source: str, uri: str | None = None):
    """-> (G in inference form, the RunConfig it was trained with) from a checkpoint
    directory, a run's checkpoints folder, or a registered model URI (`models:/NAME@ALIAS`)."""
    if not source.startswith("models:/"):
        from pipeline.checkpoint import load_generator
        return load_generator(source)
    import mlflow

    from pipeline.config import from_dict
    from pipeline.tracking import store
    mlflow.set_tracking_uri(store.resolve_uri(uri))
    try:
        metadata = mlflow.models.get_model_info(source).metadata or {}
        G = mlflow.pytorch.load_model(source, map_location="cpu")
    except Exception as e:  # MLflow raises several types for a missing model or alias
        raise GantryError(f"cannot load {source}: {str(e).splitlines()[0]}") from None
    if "config" not in metadata:
        raise GantryError(f"{source}: registered without its run config; register the run again")
    return G, from_dict(metadata["config"], source)


def source_meta(source: str, uri: str | None, classes: int) -> dict:
    """What a generator's source says about it: `source` (the checkpoint a folder resolves to,
    or the model URI), `run_id` (the MLflow run that trained it, or None) and `class_names` by
    label (numbers where it does not name its `classes`)."""
    if source.startswith("models:/"):
        import mlflow

        from pipeline.tracking import store
        mlflow.set_tracking_uri(store.resolve_uri(uri))
        info = mlflow.models.get_model_info(source)
        run_id, names = info.run_id, (info.metadata or {}).get("class_names")
    else:
        from pipeline.checkpoint import read_meta, resolve_checkpoint
        source = resolve_checkpoint(source, source)
        meta = read_meta(source)
        run_id, names = meta.get("tracking_run_id"), meta.get("class_names")
    if not names or len(names) != classes:
        names = [str(k) for k in range(classes)]
    return {"source": source, "run_id": run_id, "class_names": names}

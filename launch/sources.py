"""Where a generator comes from: a checkpoint directory, a run's checkpoints folder, or a
registered model URI such as `models:/NAME@champion`."""
from __future__ import annotations


def load_generator_from(source: str, uri: str | None = None):
    """-> (G in inference form, the RunConfig it was trained with).

    Registered models are torch.export programs (MLflow's pt2 format, no pickle); their run
    config rides in the model's metadata, put there by `gantry register`."""
    if not source.startswith("models:/"):
        from pipeline.checkpoint import load_generator
        return load_generator(source)
    import mlflow

    from pipeline.config import from_dict
    from pipeline.errors import GantryError
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

"""Where runs are stored: resolve the tracking URI and get the experiment to log into.

The default store is a SQLite file in the working directory (`sqlite:///mlruns.db`) with the
artifacts in `./mlartifacts` beside it, so a laptop run needs no server. A server URI
(`http://...`) keeps its own artifact root.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URI = "sqlite:///mlruns.db"
# Tells the MLflow 3 UI to open experiments on their runs, not on the GenAI trace views.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def resolve_uri(uri: str | None = None) -> str:
    """The URI given, else MLFLOW_TRACKING_URI, else the local SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_root(uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite file, as a file URI; None (the store decides) otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.resolve().parent / "mlartifacts").as_uri()


def experiment_id(client, name: str, uri: str) -> str:
    """Id of experiment `name`, created (with the artifact root above) if it does not exist."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_TAGS)
    except MlflowException:
        # Another worker created it between our two calls.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id

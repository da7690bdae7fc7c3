"""Do a conditional G's labelled images teach a classifier the real task?

- `cas`, the Classification Accuracy Score (Ravuri & Vinyals 2019): the domain classifier's
  recipe (pipeline/metrics/classifier.py) trained only on the n generated images and their
  labels, tested on the shard set's held-out real split; `cas_real` is the same recipe trained
  on n real training images, the number to read it against.
- `aug_gain`: the recipe on a small real subset (`aug_real`, AUG_REAL images) and on that
  subset plus the n generated images (`aug_mixed`), both tested on the held-out split;
  `aug_gain = aug_mixed - aug_real`, in accuracy points, whatever its sign.

Every classifier is seeded, so a score is a function of the images, the seed and the data.
The real-only accuracies depend on nothing G does and are cached beside the other real
statistics.
"""
from __future__ import annotations

import json

import torch

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.metrics.classifier import VERSION, accuracy, fit_classifier
from pipeline.shards.manifest import Manifest

AUG_REAL = 1000  # real images in aug_gain's small subset


def synthetic_data_scores(m: Manifest, read_real, fake: torch.Tensor, labels: torch.Tensor, metrics,
                          steps: int, seed: int, cache_dir: str, key: str) -> dict[str, float]:
    """`read_real(n, heldout=False)` -> (images, labels) of the shard set `m`."""
    if not m.heldout:
        raise GantryError(f"{m.root}: no held-out split to test cas / aug_gain on; rebuild the shards with "
                          f"one (mnist holds out its test set; others: gantry shards build SRC OUT --heldout 0.1)")
    classes = max(m.classes) + 1
    test_x, test_y = read_real(None, heldout=True)

    def trained_on(x, y) -> float:
        return accuracy(fit_classifier(x, y, classes, steps, seed=seed), test_x, test_y)

    def real_only(n: int) -> float:
        url = storage.join(cache_dir, f"real-accuracy-v{VERSION}-{key}-n{n}-s{seed}-steps{steps}.json")
        if storage.exists(url):
            return json.loads(storage.read_bytes(url))["accuracy"]
        value = trained_on(*read_real(n))
        storage.write_bytes(url, json.dumps({"accuracy": value}).encode())
        return value

    fake = fake.float()
    out: dict[str, float] = {}
    if "cas" in metrics:
        out["cas"] = trained_on(fake, labels)
        out["cas_real"] = real_only(len(fake))
    if "aug_gain" in metrics:
        small_x, small_y = read_real(AUG_REAL)
        out["aug_real"] = real_only(AUG_REAL)
        out["aug_mixed"] = trained_on(torch.cat([small_x, fake]), torch.cat([small_y, labels]))
        out["aug_gain"] = out["aug_mixed"] - out["aug_real"]
    return out

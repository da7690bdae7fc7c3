import numpy as np
import pytest

from pipeline.errors import GantryError
from pipeline.metrics.precision_recall import precision_recall


def _blobs(n, centres, seed):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, float)
    return centres[rng.integers(len(centres), size=n)] + 0.1 * rng.normal(size=(n, centres.shape[1]))


def test_identical_sets_have_full_precision_and_recall():
    x = _blobs(500, [[0, 0], [5, 5]], 0)
    assert precision_recall(x, x.copy(), k=3) == {"precision": 1.0, "recall": 1.0}


def test_same_distribution_scores_high():
    pr = precision_recall(_blobs(1000, [[0, 0], [5, 5]], 1), _blobs(1000, [[0, 0], [5, 5]], 2), k=3)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.9


def test_disjoint_sets_score_zero():
    pr = precision_recall(_blobs(500, [[0, 0]], 3), _blobs(500, [[50, 50]], 4), k=3)
    assert pr == {"precision": 0.0, "recall": 0.0}


def test_generated_subset_of_modes_is_precise_but_misses_recall():
    centres = [[0, 0], [5, 0], [0, 5], [5, 5]]
    real = _blobs(2000, centres, 5)
    fake = _blobs(1000, centres[:1], 6)  # G covers one mode of four
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.9
    assert 0.15 < pr["recall"] < 0.35


def test_bad_inputs_are_clear_errors():
    with pytest.raises(GantryError, match="one D"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(GantryError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))

"""CAS and aug_gain (pipeline/metrics/cas.py) on a small labelled shard set with a held-out
split: images whose labels are right teach the classifier as well as real data does, the same
images with wrong labels do not; scores repeat for a seed; bad set-ups are one-line errors."""
from __future__ import annotations

import pytest

from pipeline.config import ConfigError, from_dict, load_config
from pipeline.evaluation import metric_names
from pipeline.errors import GantryError
from pipeline.metrics.image_eval import ImageMetrics, read_real
from pipeline.shards import build_shards


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """8 classes of blobs (toy-ring rendered as images), a quarter held out."""
    out = tmp_path_factory.mktemp("blobs") / "shards"
    return build_shards("toy-ring", out, 16, limit=2000, heldout=0.25, workers=1, shard_size=500)


def test_cas_measures_whether_labels_match_the_images(blobs, tmp_path):
    metrics = ImageMetrics(blobs.root, tmp_path / "cache", metrics=("cas", "aug_gain"), classifier_steps=300)
    # stand-ins for a conditional G's labelled output: more of them than aug_gain's 1,000 real
    x, y = read_real(blobs, 1400, seed=3)
    right = metrics.score(x, y)
    wrong = metrics.score(x, (y + 1) % 8)
    assert right["cas"] > 0.9 and abs(right["cas"] - right["cas_real"]) < 0.05, right
    assert wrong["cas"] < 0.2, wrong  # every label off by one: the classifier learns the wrong map
    assert right["cas_real"] == wrong["cas_real"]  # G plays no part in it
    assert right["aug_gain"] == pytest.approx(right["aug_mixed"] - right["aug_real"])
    assert wrong["aug_gain"] < right["aug_gain"] - 0.05, (right, wrong)
    assert metrics.score(x, y) == right  # seeded: the same images give the same scores
    cfg = load_config("configs/mnist-cond.yaml", [f"data.path={blobs.root}", "eval.metrics=[cas, aug_gain]"])
    assert set(right) == metric_names(cfg)


def test_set_ups_cas_cannot_score_are_one_line_errors(tmp_path):
    plain = build_shards("toy-ring", tmp_path / "plain", 16, limit=200, workers=1)
    with pytest.raises(GantryError, match="no held-out split to test cas / aug_gain on; rebuild"):
        x, y = read_real(plain, 50)
        ImageMetrics(plain.root, tmp_path / "cache", metrics=("cas",), classifier_steps=10).score(x, y)
    with pytest.raises(GantryError, match="cas need a class-conditional model"):
        ImageMetrics(plain.root, tmp_path / "cache", metrics=("cas",)).score(x)
    with pytest.raises(ConfigError, match="eval.metrics cas, aug_gain score a class-conditional model's"):
        from_dict({"model": {"arch": "dcgan"}, "data": {"source": "shards", "path": "x"},
                   "eval": {"metrics": ["fid", "cas", "aug_gain"]}})

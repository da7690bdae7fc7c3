import pytest
import torch

from mnist_helpers import CLASSIFIER_STEPS, mnist_metrics_cache, mnist_shards
from pipeline.errors import GantryError
from pipeline.metrics.classifier import class_coverage, class_match, load_or_train, train_classifier
from pipeline.metrics.image_eval import data_key, read_real
from pipeline.shards import load_manifest


def _fail():
    raise AssertionError("the cached classifier should have been loaded, not retrained")


def test_mnist_classifier_is_accurate_and_cached():
    m = load_manifest(mnist_shards())
    key = f"{data_key(m)}-s{CLASSIFIER_STEPS}"
    feats = load_or_train(mnist_metrics_cache(), key, _fail, classes=10, steps=CLASSIFIER_STEPS)
    assert feats.accuracy > 0.85  # held-out 10 % of the digits
    images, labels = read_real(m, 1000, seed=7)
    assert (feats.predict(images) == labels).float().mean() > 0.85
    f = feats(images)
    assert f.shape == (1000, feats.dim) and f.dtype == torch.float32 and torch.isfinite(f).all()


def test_cache_round_trip_gives_identical_outputs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=gen)
    images = labels.view(-1, 1, 1, 1).float().expand(-1, 1, 8, 8) - 1 + 0.1 * torch.randn(300, 1, 8, 8, generator=gen)
    first = load_or_train(tmp_path, "toy", lambda: (images, labels), classes=3, steps=60)
    second = load_or_train(tmp_path, "toy", _fail, classes=3, steps=60)
    assert torch.equal(first(images), second(images)) and second.accuracy == first.accuracy
    assert {p.name for p in tmp_path.iterdir()} == {"classifier-v2-toy.safetensors", "classifier-v2-toy.json"}


def test_single_class_sets_cannot_train_a_classifier():
    with pytest.raises(GantryError, match="at least 2 classes"):
        train_classifier(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64), classes=1)


def test_class_coverage():
    share = torch.full((4,), 0.25)
    even = class_coverage(torch.arange(400) % 4, share)
    assert even == {"classes_covered": 4.0, "classes_total": 4.0, "class_tv": 0.0}
    one = class_coverage(torch.zeros(400, dtype=torch.int64), share)
    assert one["classes_covered"] == 1 and one["class_tv"] == pytest.approx(0.75)
    # A class at a tenth of its real share is not covered (threshold: half of it).
    thin = torch.cat([torch.zeros(130), torch.ones(130), torch.full((130,), 2), torch.full((10,), 3)]).long()
    assert class_coverage(thin, share)["classes_covered"] == 3


def test_class_match_is_per_asked_for_class():
    asked = torch.arange(300) % 3
    assert class_match(asked.clone(), asked) == {"class_match": 1.0, "class_match_min": 1.0}
    # Class 2's images come out as class 0 half of the time: the worst class shows it.
    predicted = asked.clone()
    predicted[(asked == 2).nonzero().squeeze(1)[::2]] = 0
    got = class_match(predicted, asked)
    assert got["class_match_min"] == pytest.approx(0.5) and got["class_match"] == pytest.approx(2.5 / 3)


def test_training_or_loading_the_classifier_leaves_the_global_rng_alone(tmp_path):
    """Metrics run inside training: a cache hit that initialised a net from the global RNG
    moved the run's stream, so a resumed run (which loads what the first one trained) drifted."""
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(64) % 2)
    for cache in ("miss", "hit"):
        state = torch.get_rng_state()
        load_or_train(tmp_path, "rng", lambda: data, classes=2, steps=3)
        assert torch.equal(torch.get_rng_state(), state), cache

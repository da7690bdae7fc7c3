import numpy as np
import pytest
import scipy.linalg
import torch

from mnist_helpers import CLASSIFIER_STEPS, mnist_metrics_cache, mnist_shards
from pipeline.config import load_config
from pipeline.errors import GantryError
from pipeline.evaluation import metric_names
from pipeline.metrics.fid import GaussianStats, fid, frechet_distance, kid, mmd2_unbiased
from pipeline.metrics.image_eval import ImageMetrics, read_real
from pipeline.shards import load_manifest


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root: an independent reference."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(np.square(mu_a - mu_b).sum() + np.trace(s_a + s_b - 2 * root))


@pytest.mark.parametrize("dim", [4, 64])
def test_fid_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    mix = rng.normal(size=(dim, dim))
    a = rng.normal(size=(500, dim)) @ mix
    b = rng.normal(size=(400, dim)) @ (mix + 0.3 * rng.normal(size=(dim, dim))) + 0.5
    assert fid(a, b) == pytest.approx(_scipy_fid(a, b), rel=1e-6)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-6)


def test_fid_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1000, 8))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.arange(8.0)
    assert fid(a, a + shift) == pytest.approx(np.square(shift).sum(), rel=1e-9)  # same covariance
    # Isotropic Gaussians: FID = |mu|^2 + d (s_a - s_b)^2 exactly.
    sa = GaussianStats(np.zeros(8), np.eye(8) * 4.0, 2)
    sb = GaussianStats(np.ones(8), np.eye(8) * 1.0, 2)
    assert frechet_distance(sa, sb) == pytest.approx(8 + 8 * (2 - 1) ** 2)


def test_fid_rejects_bad_features():
    with pytest.raises(GantryError, match="NaN"):
        fid(np.full((10, 3), np.nan), np.zeros((10, 3)))
    with pytest.raises(GantryError, match="feature sizes"):
        fid(np.zeros((10, 3)), np.zeros((10, 4)))


def test_mmd2_unbiased_hand_computed():
    # d = 2, k(x, y) = (x.y / 2 + 1)^3. Off-diagonal kxx = k(e1, e2) = 1; kyy = k((1,1), 0) = 1;
    # kxy over the four pairs: 3.375, 1, 3.375, 1 -> mean 2.1875. MMD^2 = 1 + 1 - 2 * 2.1875.
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert mmd2_unbiased(x, y) == pytest.approx(-2.375)  # unbiased: may be negative
    # Distinct constant sets: kxx = (1 + 1)^3 = 8 off-diagonal, kyy = 1, kxy = 1 -> 8 + 1 - 2.
    assert mmd2_unbiased(np.ones((3, 2)), np.zeros((4, 2))) == pytest.approx(7.0)


def test_kid_same_distribution_near_zero_and_shift_large():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = kid(a, b, subsets=20, subset_size=500)
    shifted = kid(a, b + 1.0, subsets=20, subset_size=500)
    assert abs(same) < 0.01 and shifted > 0.5
    assert kid(a, b, subsets=20, subset_size=500, seed=3) != same  # subsets really are resampled


@pytest.fixture(scope="module")
def mnist_features():
    m = load_manifest(mnist_shards())
    net = ImageMetrics(mnist_shards(), mnist_metrics_cache(), classifier_steps=CLASSIFIER_STEPS).classifier
    images, labels = read_real(m)
    return net, images, labels


def test_fid_on_real_mnist_separates_real_from_noise(mnist_features):
    net, images, labels = mnist_features
    ref, held_out = net(images[:2500]).numpy(), net(images[2500:5000]).numpy()
    gen = torch.Generator().manual_seed(0)
    noise = net(torch.rand(2500, 1, 32, 32, generator=gen) * 2 - 1).numpy()
    ones = net(images[5000:][labels[5000:] == 1]).numpy()  # one digit only: a collapsed G
    real_fid, noise_fid, ones_fid = fid(ref, held_out), fid(ref, noise), fid(ref, ones)
    assert noise_fid > 50 * real_fid and ones_fid > 10 * real_fid
    assert kid(ref, held_out, 20, 500) < 0.1 * kid(ref, noise, 20, 500)


def test_image_metrics_on_real_and_noise_with_cached_statistics(mnist_features, tmp_path):
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(mnist_metrics_cache(), cache)
    metrics = ImageMetrics(mnist_shards(), cache, metrics=("fid", "kid", "pr", "coverage"),
                           n_real=3000, kid_subsets=10, kid_subset_size=500, classifier_steps=CLASSIFIER_STEPS)
    _, images, labels = mnist_features
    real = metrics.score(images[-2000:])  # overlaps the reference draw only by chance
    noise = metrics.score(torch.rand(2000, 1, 32, 32) * 2 - 1)
    assert real["fid_classifier"] * 20 < noise["fid_classifier"]
    assert real["precision_classifier"] > 0.6 and noise["precision_classifier"] < 0.1
    assert real["classes_covered"] == 10 == real["classes_total"] and real["class_tv"] < 0.1
    assert "class_match" not in real  # an unconditional G asks for no class
    asked = metrics.score(images[-2000:], labels[-2000:])
    conditional = load_config("configs/mnist-cond.yaml", [f"data.path={mnist_shards()}",
                                                           "eval.metrics=[fid, kid, pr, coverage]"])
    assert set(asked) | {"fid"} == metric_names(conditional)  # what a sweep may ask for (fid: the evaluator's alias)
    assert set(real) | {"fid"} == metric_names(load_config("configs/mnist-dcgan.yaml", [
        f"data.path={mnist_shards()}", "eval.metrics=[fid, kid, pr, coverage]"]))
    assert asked["class_match_min"] > 0.7 and asked["class_match"] > 0.85
    assert metrics.score(images[-2000:], labels[-2000:].roll(1))["class_match"] < 0.3
    ones = metrics.score(images[labels == 1][:500])
    assert ones["classes_covered"] == 1 and ones["class_tv"] > 0.8
    cached = list(cache.glob("real-*-n3000-*.npy"))
    assert len(cached) == 1
    # A second evaluator reads the cached statistics: same numbers, no recomputation.
    again = ImageMetrics(mnist_shards(), cache, metrics=("fid",), n_real=3000, classifier_steps=CLASSIFIER_STEPS)
    mtime = cached[0].stat().st_mtime_ns
    assert again.score(images[-2000:])["fid_classifier"] == pytest.approx(real["fid_classifier"], rel=1e-6)
    assert cached[0].stat().st_mtime_ns == mtime
    with pytest.raises(GantryError, match="shard set holds"):
        metrics.score(torch.zeros(4, 3, 32, 32))


def test_inception_preprocessing_and_features():
    from pipeline.metrics.inception import DIM, InceptionFeatures, preprocess
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(2, 1, 32, 3)
    p = preprocess(x)
    assert p.shape == (2, 3, 299, 299)
    assert p.min().item() == -1.0 and p.max().item() == pytest.approx(127 / 128)  # TF's (v - 128) / 128
    gray = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    net = InceptionFeatures()
    f_gray, f_rgb = net(gray), net(gray.expand(-1, 3, -1, -1))
    assert f_gray.shape == (2, DIM) and torch.isfinite(f_gray).all() and (f_gray >= 0).all()  # post-ReLU pool
    assert torch.allclose(f_gray, f_rgb)
    assert not torch.allclose(f_gray[0], f_gray[1])
    with pytest.raises(GantryError, match="1|3"):
        net(torch.zeros(1, 2, 32, 32))


def test_spread_is_the_rms_distance_between_two_samples():
    feats = np.random.default_rng(0).normal(size=(300, 12)) * np.linspace(0.1, 3, 12)
    pairs = torch.pdist(torch.from_numpy(feats)).square().mean().sqrt().item()
    assert GaussianStats.of(feats).spread == pytest.approx(pairs, rel=1e-9)
    assert GaussianStats.of(feats * 0.1).spread == pytest.approx(0.1 * pairs, rel=1e-9)


def test_labels_in_shares_round_by_largest_remainder():
    from pipeline.evaluation import labels_in_shares
    assert labels_in_shares(7, torch.tensor([0.5, 0.3, 0.2])).tolist() == [0, 0, 0, 0, 1, 1, 2]  # 3.5 2.1 1.4
    assert torch.bincount(labels_in_shares(1000, torch.tensor([0.25] * 4))).tolist() == [250] * 4


def test_conditional_generator_is_asked_for_the_real_class_mix(mnist_features, tmp_path):
    """A conditional G that draws real digits of the class it is asked for is judged by its
    class mix: with the real set's mix class_tv is the classifier's error alone; the classes in
    turn would add MNIST's own imbalance."""
    import shutil
    from pipeline.evaluation import ImageEvaluator
    from pipeline.tracking import Tracker
    _, images, labels = mnist_features
    pool = {c: images[labels == c] for c in range(10)}
    asked = []

    class Faithful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # generate() reads the device from it
            self.drawn = dict.fromkeys(pool, 0)

        def forward(self, z, c):
            asked.append(c)
            out = []
            for k in c.tolist():
                out.append(pool[k][self.drawn[k] % len(pool[k])])
                self.drawn[k] += 1
            return torch.stack(out)

    shutil.copytree(mnist_metrics_cache(), tmp_path / "cache")
    metrics = ImageMetrics(mnist_shards(), tmp_path / "cache", metrics=("coverage",), n_real=3000,
                           classifier_steps=CLASSIFIER_STEPS)
    scores = ImageEvaluator(8, str(tmp_path / "run"), metrics, n_fake=2000, classes=10)(Faithful(), 0, Tracker())
    counts = torch.bincount(torch.cat(asked[1:]), minlength=10).double()  # asked[0]: the sample grid
    assert (counts - 2000 * metrics.class_shares()).abs().max() < 1  # largest remainder: off by under one
    in_turn = 0.5 * (metrics.class_shares() - 0.1).abs().sum().item()
    assert scores["class_tv"] < 0.01 < in_turn

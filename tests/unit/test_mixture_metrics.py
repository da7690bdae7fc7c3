import torch

from pipeline.metrics.mixture import mixture_scores
from pipeline.mixtures import MixtureStream, mixture_centers


def test_centers():
    ring = mixture_centers("toy-ring", 8, 2.0)
    torch.testing.assert_close(ring.norm(dim=1), torch.full((8,), 2.0))
    grid = mixture_centers("toy-grid", 25, 4.0)
    assert sorted(set(grid[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_true_distribution_scores_perfectly():
    s = MixtureStream("toy-ring", 8, 0.02, 2.0, batch=10_000, seed=0)
    points, _ = next(s)
    scores = mixture_scores(points, s.centers, 0.02)
    # a 2-D Gaussian puts 1 - exp(-9/2) = 98.89 % of its mass within 3 sigma
    assert scores["modes_covered"] == 8 and abs(scores["hq_pct"] - 98.89) < 0.4


def test_collapsed_and_off_manifold():
    centers = mixture_centers("toy-ring", 8, 2.0)
    one_mode = centers[0] + 0.01 * torch.randn(1000, 2)
    assert mixture_scores(one_mode, centers, 0.02)["modes_covered"] == 1
    blur = torch.randn(1000, 2)
    assert mixture_scores(blur, centers, 0.02)["hq_pct"] < 5.0


def test_mode_threshold_is_point_eight_percent():
    centers = mixture_centers("toy-ring", 8, 2.0)
    pts = torch.cat([centers[0].repeat(980, 1), centers[1].repeat(20, 1)])  # 2.0 % and ...
    assert mixture_scores(pts, centers, 0.02)["modes_covered"] == 2
    pts = torch.cat([centers[0].repeat(993, 1), centers[1].repeat(7, 1)])  # 0.7 % < 0.8 %
    assert mixture_scores(pts, centers, 0.02)["modes_covered"] == 1


def test_stream_state_round_trip():
    a = MixtureStream("toy-grid", 25, 0.05, 4.0, batch=4, seed=3)
    next(a)
    state = a.state_dict()
    x1, _ = next(a)
    b = MixtureStream("toy-grid", 25, 0.05, 4.0, batch=4, seed=99)
    b.load_state_dict(state)
    assert torch.equal(next(b)[0], x1)

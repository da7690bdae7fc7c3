"""The translation family's parts: its metrics against closed forms, its config rules, the
fit of model to data, and its phases (L1 + adversarial, the L1-only baseline, R1 on a patch map)."""
from __future__ import annotations

import math

import pytest
import torch

from models.augment import Augment
from pipeline.config import ConfigError, from_dict
from pipeline.metrics.translation import l1, pair_scores, psnr, ssim
from pipeline.phases import Batch, build_phases
from pipeline.precision import choose_precision
from pipeline.worker import build_networks, with_task

PIX2PIX = {"model": {"arch": "pix2pix", "resolution": 16, "g_width": 8, "d_width": 8},
           "data": {"source": "shards", "path": "."}, "eval": {"metrics": ["fid"]},
           "train": {"precision": "fp32"}}


def images(seed: int, n: int = 4, c: int = 1, side: int = 16) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_l1_and_psnr_of_a_constant_offset():
    x = images(0).clamp(-1, 0.5)
    y = x + 0.5   # 0.25 on [0, 1]
    assert torch.allclose(l1(x, y), torch.full((4,), 0.5))
    assert torch.allclose(psnr(x, y), torch.full((4,), -20 * math.log10(0.25)))
    assert torch.allclose(psnr(x, x), torch.full((4,), 100.0))   # floored MSE, not inf


def test_ssim_is_one_for_identical_images_symmetric_and_falls_with_noise():
    x = images(1, c=3, side=32)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    noisy = [(x + s * images(2, c=3, side=32)).clamp(-1, 1) for s in (0.05, 0.2, 0.8)]
    scores = [ssim(x, y).mean().item() for y in noisy]
    assert scores[0] > scores[1] > scores[2] and scores[0] < 1
    assert torch.allclose(ssim(x, noisy[1]), ssim(noisy[1], x), atol=1e-6)
    # a uniform brightness shift keeps the structure: SSIM stays well above the noisy ones'
    assert ssim(x * 0.5, x * 0.5 + 0.1).mean() > scores[1]


def test_pair_scores_are_the_means_of_the_per_pair_values():
    x, y = images(3), images(4)
    s = pair_scores(x, y)
    assert s["l1"] == pytest.approx(l1(x, y).mean().item()) and s["ssim"] == pytest.approx(ssim(x, y).mean().item())
    assert s["psnr"] == pytest.approx(psnr(x, y).mean().item())


@pytest.mark.parametrize("change, message", [
    ({"model": {"conditional": True}}, "model.conditional"),
    ({"augment": {"kind": "ada"}}, "trains without augmentation"),
    ({"eval": {"metrics": ["fid", "kid"]}}, "eval.metrics kid do not apply"),
    ({"loss": {"l1_weight": 0, "adv_weight": 0}}, "would learn nothing"),
    ({"model": {"resolution": 4}}, "8 or more for pix2pix"),
])
def test_config_refuses_what_pix2pix_cannot_run(change, message):
    tree = {k: dict(v) for k, v in PIX2PIX.items()}
    for section, values in change.items():
        tree.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        from_dict(tree, "p2p.yaml")


def test_the_model_family_must_fit_the_datas_task():
    cfg = from_dict(PIX2PIX)
    assert with_task(cfg, "pairs", 3, "shards/").model.input_channels == 3
    with pytest.raises(ConfigError, match="translates paired images, but shards/ holds images"):
        with_task(cfg, "images", None, "shards/")
    dcgan = from_dict({"model": {"arch": "dcgan"}, "data": {"source": "shards", "path": "."}})
    with pytest.raises(ConfigError, match="draws images from noise, but shards/ holds pairs; use model.arch: pix2pix"):
        with_task(dcgan, "pairs", 1, "shards/")
    assert with_task(dcgan, "images", None, "shards/") is dcgan


def _phases(**loss):
    cfg = with_task(from_dict({**PIX2PIX, "loss": loss}), "pairs", 1, "shards/")
    precision = choose_precision(cfg.train, torch.device("cpu"), image_model=True)
    torch.manual_seed(0)
    G, D = build_networks(cfg, channels=1)
    # eval mode: dropout off, so a test's own G(A) equals the one inside the phase
    return build_phases(cfg, Augment(), precision, reduce=lambda t: t), G.eval(), D


def test_l1_only_baseline_is_one_g_phase_on_real_pairs_with_the_weighted_l1():
    phases, G, D = _phases(adv_weight=0, l1_weight=100)
    assert [(p.name, p.net, p.draws) for p in phases] == [("G_main", "G", "real")]
    a, b = images(5), images(6)
    loss, stats = phases[0].loss(G, D, Batch(b, torch.zeros(4, 1), c=a))
    assert set(stats) == {"l1"}
    assert torch.allclose(loss, 100 * (G(a) - b).abs().flatten(1).mean(1))


def test_pix2pix_phases_judge_pairs_and_report_the_adversarial_term_apart():
    phases, G, D = _phases(r1_gamma=1.0, r1_interval=4)
    assert [(p.name, p.draws) for p in phases] == [("D_main", "real"), ("D_r1", "same"), ("G_main", "same")]
    a, b = images(7), images(8)
    batch = Batch(b, torch.zeros(4, 1), c=a)
    d, g = phases[0], phases[2]
    loss, stats = d.loss(G, D, batch)
    assert loss.shape == (4,) and {"D_real", "D_fake"} <= set(stats)
    loss, stats = g.loss(G, D, batch)
    l1_term = (G(a) - b).abs().flatten(1).mean(1)
    assert torch.allclose(stats["l1"], l1_term.mean(), atol=1e-5)
    assert torch.allclose(loss.mean(), stats["adv"] + 100 * stats["l1"], rtol=1e-5)
    r1, _ = phases[1].loss(G, D, batch)
    assert r1.shape == (4,) and torch.isfinite(r1).all() and (r1 > 0).all()
    # D judges B as a translation of its own A: the same B beside another A scores differently
    assert not torch.allclose(D(a, b), D(a.flip(0), b))

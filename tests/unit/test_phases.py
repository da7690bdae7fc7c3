"""The generation family's phases: the relativistic pairing loss, R1 and R2 (lazy, or plain in
D's main step), and the γ ramp."""
import torch

from models.augment import Augment
from models.losses import r1_penalty
from pipeline.config import from_dict
from pipeline.phases import Batch, build_phases
from pipeline.precision import choose_precision
from pipeline.schedules import cosine
from pipeline.worker import build_networks


def _toy(precision="fp32", ramp_kimg=0.0, **loss):
    cfg = from_dict({"loss": {"kind": "rpgan", **loss}, "train": {"precision": precision, "ramp_kimg": ramp_kimg}})
    precision = choose_precision(cfg.train, torch.device("cpu"), image_model=False)
    torch.manual_seed(0)
    G, D = build_networks(cfg, channels=2)
    gen = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 2, generator=gen), torch.randn(8, cfg.model.z_dim, generator=gen))
    return build_phases(cfg, Augment(), precision, reduce=lambda t: t), G, D, batch


def _grads(net, loss):
    net.zero_grad()
    loss.mean().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_plain_r1_and_r2_share_d_mains_forward_and_equal_the_separate_phases():
    plain, G, D, batch = _toy(r1_gamma=0.2, r2_gamma=0.4, r1_interval=1)
    assert [(p.name, p.interval, p.gain, p.draws) for p in plain] == [("D_main", 1, 1.0, "real"),
                                                                      ("G_main", 1, 1.0, "latents")]
    lazy, *_ = _toy(r1_gamma=0.2, r2_gamma=0.4, r1_interval=2)   # same G and D (seed 0), own phases
    assert [p.name for p in lazy] == ["D_main", "D_r1", "D_r2", "G_main"]
    fake = G(batch.z).detach()
    r1, r1_stats = lazy[1].loss(G, D, batch)
    r2, r2_stats = lazy[2].loss(G, D, batch)
    torch.testing.assert_close(r1, 0.1 * r1_penalty(D, batch.real))   # gamma / 2 x R1 on the reals
    torch.testing.assert_close(r2, 0.2 * r1_penalty(D, fake))         # and on the fakes: R2
    assert not torch.allclose(r1, r2 / 2)   # the two look at different samples
    main, _ = lazy[0].loss(G, D, batch)
    both, stats = plain[0].loss(G, D, batch)
    torch.testing.assert_close(both, main + r1 + r2)
    torch.testing.assert_close(stats["r1"], r1_stats["r1"])
    torch.testing.assert_close(stats["r2"], r2_stats["r2"])
    for a, b in zip(_grads(D, both), _grads(D, main + r1 + r2)):
        torch.testing.assert_close(a, b)


def test_plain_penalties_under_autocast_keep_their_own_fp32_phases():
    phases, *_ = _toy(precision="bf16", r1_gamma=0.2, r2_gamma=0.4, r1_interval=1)
    assert [(p.name, p.interval, p.gain) for p in phases] == [
        ("D_main", 1, 1.0), ("D_r1", 1, 1.0), ("D_r2", 1, 1.0), ("G_main", 1, 1.0)]


def test_gamma_follows_its_cosine_ramp():
    phases, G, D, batch = _toy(ramp_kimg=100.0, r2_gamma=1.0, gamma_end=0.1, r1_interval=4)
    at = {}
    for kimg in (0.0, 50.0, 100.0, 400.0):
        batch.kimg = kimg
        at[kimg] = phases[1].loss(G, D, batch)[0]
    full = at[0.0]
    torch.testing.assert_close(at[50.0], full * 0.55)   # halfway: (1 + 0.1) / 2
    torch.testing.assert_close(at[100.0], full * 0.1)
    torch.testing.assert_close(at[400.0], full * 0.1)   # it stays at the end value


def test_cosine_ramp_ends_and_the_whole_run_is_the_default_length():
    assert cosine(0.9, 0.99, 0.0, 10.0) == 0.9
    assert abs(cosine(0.9, 0.99, 5.0, 10.0) - 0.945) < 1e-12
    assert cosine(0.9, 0.99, 30.0, 10.0) == 0.99
    assert from_dict({"train": {"kimg": 300}}).ramp_kimg == 300
    assert from_dict({"train": {"kimg": 300, "ramp_kimg": 50}}).ramp_kimg == 50


def test_rpgan_phases_pair_reals_with_fakes_for_d_and_for_g():
    phases, G, D, batch = _toy()
    assert [p.name for p in phases] == ["D_main", "G_main"]
    fake_logits, real_logits = D(G(batch.z)), D(batch.real)
    d, _ = phases[0].loss(G, D, batch)
    g, _ = phases[1].loss(G, D, batch)
    torch.testing.assert_close(d, torch.nn.functional.softplus(fake_logits - real_logits))
    torch.testing.assert_close(g, torch.nn.functional.softplus(real_logits - fake_logits))


def test_lazy_r2_is_scaled_by_its_interval():
    phases, *_ = _toy(r2_gamma=1.0, r1_interval=8)
    assert [(p.name, p.interval, p.gain) for p in phases] == [("D_main", 1, 1.0), ("D_r2", 8, 8.0), ("G_main", 1, 1.0)]


def test_g_learns_from_its_best_fakes_along_the_topk_ramp():
    phases, G, D, batch = _toy(ramp_kimg=100.0, g_topk=0.25)
    every = torch.nn.functional.softplus(D(batch.real) - D(G(batch.z)))
    at_start, _ = phases[-1].loss(G, D, batch)
    torch.testing.assert_close(at_start, every)   # from every fake
    batch.kimg = 100.0
    at_end, _ = phases[-1].loss(G, D, batch)
    best = every.detach().sort().values[:2]   # a quarter of 8
    torch.testing.assert_close(at_end.sum(), best.sum() * 4)
    assert at_end.count_nonzero() == 2

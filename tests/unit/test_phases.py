"""The generation family's phases for the relativistic pairing loss with R1 and R2."""
import torch

from models.augment import Augment
from models.losses import r1_penalty
from pipeline.config import from_dict
from pipeline.phases import Batch, build_phases
from pipeline.precision import choose_precision
from pipeline.worker import build_networks


def _toy(**loss):
    cfg = from_dict({"loss": {"kind": "rpgan", **loss}, "train": {"precision": "fp32"}})
    precision = choose_precision(cfg.train, torch.device("cpu"), image_model=False)
    torch.manual_seed(0)
    G, D = build_networks(cfg, channels=2)
    gen = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 2, generator=gen), torch.randn(8, cfg.model.z_dim, generator=gen))
    return build_phases(cfg, Augment(), precision, reduce=lambda t: t), G, D, batch


def test_plain_r1_and_r2_run_every_step_beside_the_main_losses():
    phases, G, D, batch = _toy(r1_gamma=0.2, r2_gamma=0.4, r1_interval=1)
    assert [(p.name, p.interval, p.gain, p.draws) for p in phases] == [
        ("D_main", 1, 1.0, "real"), ("D_r1", 1, 1.0, "same"), ("D_r2", 1, 1.0, "same"), ("G_main", 1, 1.0, "latents")]
    fake = G(batch.z).detach()
    r2, stats = phases[2].loss(G, D, batch)
    torch.testing.assert_close(r2, 0.2 * r1_penalty(D, fake))   # gamma / 2 x R1 on the fakes
    r1, _ = phases[1].loss(G, D, batch)
    torch.testing.assert_close(r1, 0.1 * r1_penalty(D, batch.real))
    assert not torch.allclose(r1, r2 / 2)   # the two look at different samples


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

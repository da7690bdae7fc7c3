"""Class-conditional networks (models/conditional.py): G draws the class it is given, the
projection D scores an image against a label, unlabelled calls take the classes in turn, and
an unconditional network is what it was before conditioning existed."""
from __future__ import annotations

import pytest
import torch

from models.augment import Augment
from pipeline.config import ConfigError, from_dict, with_overrides
from pipeline.evaluation import no_evaluation
from pipeline.health import Probe, diversity
from pipeline.metrics.image_eval import read_real
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.strategy.single import SingleStrategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer
from pipeline.worker import build_networks, health_probe, make_networks, make_stream, with_classes
from shard_helpers import build_indexed

K = 4
IMAGES = {"source": "shards", "path": "shards/"}
ARCHS = {
    "mlp": {"g_width": 32, "d_width": 32, "depth": 2},
    "dcgan": {"resolution": 32, "g_width": 8, "d_width": 8},
    "resnet": {"resolution": 32, "g_width": 16, "d_width": 16},
    "stylegan2": {"resolution": 8, "g_width": 16, "d_width": 16, "w_dim": 16, "mapping_layers": 2},
}


def nets(arch: str, classes: int):
    cfg = from_dict({"model": {"arch": arch, "z_dim": 16, "conditional": classes > 0, "classes": classes,
                               **ARCHS[arch]}, "data": IMAGES if arch != "mlp" else {}})
    torch.manual_seed(0)
    G, D = build_networks(cfg, channels=2 if arch == "mlp" else 1)
    return G.eval(), D.eval()  # eval: batch norm uses running stats, so samples do not mix


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_draws_the_class_it_is_given(arch):
    G, _ = nets(arch, K)
    z = torch.randn(1, 16).repeat(K, 1)  # one latent, every class
    with torch.no_grad():
        # DCGAN's per-class batch norm starts as plain batch norm (every class alike until
        # training moves it), so its label tables are drawn as training might leave them.
        for name, p in G.named_parameters():
            if "embed_" in name:
                p.normal_(float(name.endswith("gain.weight")), 0.2)
        out = G(z, torch.arange(K))
    for a in range(K):
        for b in range(a + 1, K):
            assert (out[a] - out[b]).abs().max() > 1e-4, (a, b)
    # no labels: the classes in turn (close, not bitwise: oneDNN may pick another kernel per call)
    with torch.no_grad():
        torch.testing.assert_close(G(z), out)


@pytest.mark.parametrize("arch", ARCHS)
def test_projection_discriminator_scores_against_the_label(arch):
    G, D = nets(arch, K)
    with torch.no_grad():
        one = G(torch.randn(1, 16), torch.tensor([0]))
        x = one.expand(K, *one.shape[1:])
        logits = D(x, torch.arange(K))
    assert logits.shape == (K,)
    assert len(set(logits.tolist())) == K  # the same image, K labels, K different scores
    # the projection term is what differs: D's logit without it is one number for all
    with torch.no_grad():
        D.project = None
        assert len(set(D(x, torch.arange(K)).tolist())) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_unconditional_networks_have_no_label_parts_and_ignore_labels(arch):
    G, D = nets(arch, 0)
    assert not [k for k in {**G.state_dict(), **D.state_dict()} if "embed" in k or "project" in k]
    z = torch.randn(4, 16)
    with torch.no_grad():
        x = G(z)
        assert torch.equal(G(z, torch.arange(4)), x)
        assert torch.equal(D(x, torch.arange(4)), D(x))


def test_class_count_comes_from_the_data():
    cfg = from_dict({"model": {"arch": "dcgan", "conditional": True}, "data": IMAGES})
    assert with_classes(cfg, [str(k) for k in range(10)], "shards/").model.classes == 10
    unconditional = from_dict({"model": {"arch": "dcgan"}, "data": IMAGES})
    assert with_classes(unconditional, ["only"], "shards/") is unconditional
    with pytest.raises(ConfigError, match=r"model.conditional: shards/ has 1 class \(cats\); .*two or more"):
        with_classes(cfg, ["cats"], "shards/")
    with pytest.raises(ConfigError, match="model.classes is 3 but shards/ has 10 classes"):
        with_classes(from_dict({"model": {"conditional": True, "classes": 3}}), [str(k) for k in range(10)], "shards/")


class _LabelledImages:
    """Class k is a flat image of brightness k, with a little noise."""

    def __init__(self, resolution: int):
        self.resolution, self.gen = resolution, torch.Generator().manual_seed(0)

    def __next__(self):
        y = torch.randint(K, (8,), generator=self.gen)
        r = self.resolution
        x = (y.float() / (K - 1) * 2 - 1).view(-1, 1, 1, 1).expand(-1, 1, r, r)
        return x + 0.05 * torch.randn(8, 1, r, r, generator=self.gen), y


@pytest.mark.parametrize("arch", ["dcgan", "resnet", "stylegan2"])
def test_every_image_family_trains_its_label_parts_with_r1_augmentation_and_ema(tmp_path, arch):
    cfg = from_dict({"model": {"arch": arch, "z_dim": 16, "conditional": True, "classes": K, **ARCHS[arch]},
                     "loss": {"kind": "logistic", "r1_gamma": 1.0, "r1_interval": 2},
                     "augment": {"kind": "diffaugment", "policy": "translation,cutout"},
                     "train": {"batch": 8, "precision": "fp32", "ema_kimg": 0.01},
                     "data": IMAGES, "tracking": {"enabled": False}})
    strategy = SingleStrategy(torch.device("cpu"))
    precision = choose_precision(cfg.train, strategy.device, image_model=True)
    torch.manual_seed(0)
    G_ema = make_networks(cfg, strategy, precision, channels=1)
    augment = Augment("diffaugment", "translation,cutout")
    phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)
    assert "D_r1" in [p.name for p in phases]
    trainer = Trainer(cfg, strategy, G_ema, phases, _LabelledImages(ARCHS[arch]["resolution"]), precision,
                      augment, Tracker(), no_evaluation, None, Probe(()), tmp_path, channels=1)
    nets = {"G": strategy.module("G"), "D": strategy.module("D"), "G_ema": G_ema}
    label_parts = {(n, k): v.detach().clone() for n, net in nets.items()
                   for k, v in net.state_dict().items() if "embed" in k or "project" in k}
    assert {n for n, _ in label_parts} == {"G", "D", "G_ema"}
    for _ in range(4):
        trainer.train_step()
    for (n, k), before in label_parts.items():
        after = nets[n].state_dict()[k]
        assert torch.isfinite(after).all() and not torch.equal(after, before), (n, k)


def test_health_probe_asks_a_conditional_g_for_its_classes_and_reads_the_data_within_classes(tmp_path):
    shards = build_indexed(tmp_path)  # labels 0, 1, 2 in turn
    cfg = from_dict({"model": {"arch": "dcgan", "resolution": 8, "conditional": True},
                     "health": {"diversity_samples": 30}, "data": {"source": "shards", "path": str(shards)}})
    stream = make_stream(cfg, 0, 1)
    cfg = with_classes(cfg, stream.class_names, str(shards))
    probe = health_probe(cfg, stream)
    z, c = probe.inputs
    assert z.shape == (30, cfg.model.z_dim) and torch.equal(c, torch.arange(30) % 3) and probe.labels is c
    real, labels = read_real(stream.manifest, 30, head=True)
    assert probe.real_diversity == pytest.approx(diversity(real, labels))
    unconditional = health_probe(from_dict({**cfg.model_dump(mode="json"), "model": {"arch": "dcgan", "resolution": 8}}), stream)
    assert len(unconditional.inputs) == 1 and unconditional.labels is None
    assert unconditional.real_diversity == pytest.approx(diversity(real))
    # fewer latents than two per class would leave classes without pairs: the probe takes two each
    few = health_probe(with_overrides(cfg, ["health.diversity_samples=4"], "test"), stream)
    assert torch.equal(few.labels, torch.arange(6) % 3) and few.inputs[0].shape == (6, cfg.model.z_dim)

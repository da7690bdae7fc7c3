"""Class-conditional networks (models/conditional.py): G draws the class it is given, the
projection D scores an image against a label, unlabelled calls take the classes in turn, and
an unconditional network is what it was before conditioning existed."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError, from_dict
from pipeline.worker import build_networks, with_classes

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
        out = G(z, torch.arange(K))
    for a in range(K):
        for b in range(a + 1, K):
            assert (out[a] - out[b]).abs().max() > 1e-4, (a, b)
    # no labels: the classes in turn
    with torch.no_grad():
        assert torch.equal(G(z), out)


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

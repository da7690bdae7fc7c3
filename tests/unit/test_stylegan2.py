"""StyleGAN2 G and D on the fused ops: shapes, R1 through both ops, a few training steps."""
import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, channels_at

pytestmark = pytest.mark.filterwarnings("error::models.ops.TritonFallbackWarning")


@pytest.mark.parametrize("resolution", [32, 64])
def test_forward_shapes(resolution):
    torch.manual_seed(0)
    G = StyleGAN2Generator(z_dim=16, w_dim=32, resolution=resolution, channels=3, width=8, mapping_layers=2)
    D = StyleGAN2Discriminator(resolution=resolution, channels=3, width=8)
    img = G(torch.randn(3, 16))
    assert img.shape == (3, 3, resolution, resolution) and torch.isfinite(img).all()
    logits = D(img)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_channel_widths_double_per_halving_up_to_the_cap():
    assert [channels_at(s, 32, 16, 512) for s in (4, 8, 16, 32)] == [128, 64, 32, 16]
    assert channels_at(4, 256, 32, 512) == 512
    D = StyleGAN2Discriminator(resolution=32, channels=1, width=16)
    assert D.from_rgb.weight.shape[:2] == (16, 1) and D.conv.weight.shape[0] == 128


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError, match="power of two >= 8, got 48"):
        StyleGAN2Generator(16, 32, 48, 3, 8, 2)


def test_noise_modes():
    torch.manual_seed(1)
    G = StyleGAN2Generator(16, 32, 32, 1, 8, 2)
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 16)
    torch.testing.assert_close(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.allclose(G(z), G(z))


def r1_grads(impl):
    torch.manual_seed(2)
    D = StyleGAN2Discriminator(resolution=32, channels=3, width=8, conv_clamp=256, impl=impl)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(D(x).sum(), [x], create_graph=True)
    g.square().sum().backward()
    return {n: p.grad for n, p in D.named_parameters()}


def test_r1_penalty_reaches_d_through_both_ops_and_matches_reference():
    ref, tri = r1_grads("ref"), r1_grads("triton")
    weights = [n for n in ref if n.endswith("weight")]
    assert all(ref[n] is not None and ref[n].abs().sum() > 0 for n in weights)
    # The last bias shifts D(x) by a constant, so R1 cannot see it; every other parameter can.
    assert ref["out.bias"] is None and tri["out.bias"] is None
    scale = max(ref[n].abs().max() for n in weights)
    for name, grad in ref.items():
        if grad is not None:
            torch.testing.assert_close(tri[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_a_few_training_steps_with_lazy_r1():
    torch.manual_seed(3)
    G = StyleGAN2Generator(16, 32, 32, 1, 8, 2)
    D = StyleGAN2Discriminator(32, 1, 8)
    g_opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    before = [p.detach().clone() for p in D.parameters()]
    for step in range(3):
        d_loss = F.softplus(D(G(torch.randn(4, 16)).detach())).mean() + F.softplus(-D(real)).mean()
        if step % 2 == 0:  # lazy R1, scaled by its interval
            x = real.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(D(x).sum(), [x], create_graph=True)
            d_loss = d_loss + 2 * 5.0 * g.square().sum(dim=[1, 2, 3]).mean()
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_loss = F.softplus(-D(G(torch.randn(4, 16)))).mean()
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, D.parameters()) if a.ndim > 1)

import pytest
import torch

from models.augment import OPS, AdaptiveP, Augment, augment, parse_policy


def _images(b=8, c=3, side=16, dtype=torch.float32):
    return (torch.rand(b, c, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
@pytest.mark.parametrize("c", [1, 3])
def test_shape_dtype_kept_and_images_change(policy, c):
    for dtype in (torch.float32, torch.float64):
        x = _images(c=c, dtype=dtype)
        y = augment(x, policy, p=1.0, generator=torch.Generator().manual_seed(1))
        assert y.shape == x.shape and y.dtype == dtype
        assert not torch.equal(y, x)


def test_p_zero_is_identity_and_p_gates_per_sample():
    x = _images(b=256)
    assert augment(x, "color,translation,cutout", p=0.0) is x
    y = augment(x, "cutout", p=0.5, generator=torch.Generator().manual_seed(2))
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.35 < changed < 0.65  # about half the samples were cut


def test_translation_moves_content_and_fills_zeros():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0  # a bright square in the middle
    y = augment(x, "translation", generator=torch.Generator().manual_seed(3))
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # a 1-px shift keeps the square inside
    assert (y != x).flatten(1).any(1).any()
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_cutout_zeroes_a_square():
    x = torch.ones(16, 1, 16, 16)
    y = augment(x, "cutout", generator=torch.Generator().manual_seed(4))
    zeros = (y == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()  # an 8x8 square, clipped at the border


@pytest.mark.parametrize("policy", list(OPS))
def test_gradients_flow_to_input_first_and_second_order(policy):
    x = _images(b=4).double().requires_grad_(True)
    w = torch.randn_like(x)
    gen = torch.Generator()
    out = (augment(x, policy, generator=gen.manual_seed(5)) * w).square().sum()
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    assert g.abs().sum() > 0
    (gg,) = torch.autograd.grad(g.square().sum(), x)  # what R1 through augmented reals needs
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    # Fixed randomness: the op is a differentiable function of x; check the gradient numerically.
    f = lambda inp: augment(inp, policy, generator=gen.manual_seed(5))
    assert torch.autograd.gradcheck(f, (x[:2].detach().requires_grad_(True),))


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="rotate"):
        parse_policy("color,rotate")


def test_ada_p_rises_when_d_overfits_and_falls_otherwise():
    ada = AdaptiveP(target=0.6, interval=4, kimg=1.0)
    overfit = torch.full((64,), 5.0)  # sign(D(real)) = +1 everywhere: r_t = 1 > 0.6
    for _ in range(4):
        ada.update(overfit, batch=64)
    assert ada.p == pytest.approx(4 * 64 / 1000) and ada.r_t == 1.0
    for _ in range(3):
        ada.update(-overfit, batch=64)
    assert ada.p == pytest.approx(4 * 64 / 1000)  # only every `interval` updates
    ada.update(-overfit, batch=64)
    assert ada.p == pytest.approx(0.0) and ada.r_t == -1.0


def test_ada_p_clamps_to_unit_interval_and_target_is_the_threshold():
    ada = AdaptiveP(target=0.6, interval=1, kimg=0.01)  # each update moves p by >= 1
    ada.update(torch.ones(100), batch=100)
    assert ada.p == 1.0
    ada.update(torch.ones(100), batch=100)
    assert ada.p == 1.0
    mixed = torch.tensor([1.0] * 70 + [-1.0] * 30)  # r_t = 0.4 < 0.6: lower
    ada.update(mixed, batch=100)
    assert ada.p == 0.0 and ada.r_t == pytest.approx(0.4)
    ada.update(mixed, batch=100)
    assert ada.p == 0.0


def test_ada_reduce_sees_sums_and_state_round_trips():
    seen = []
    ada = AdaptiveP(interval=2, kimg=1.0)
    ada.update(torch.ones(10), 10, reduce=lambda t: seen.append(t.clone()) or t)
    ada.update(torch.ones(10), 10, reduce=lambda t: seen.append(t.clone()) or t)
    assert len(seen) == 1 and seen[0].tolist() == [20.0, 20.0]
    ada.update(torch.ones(10), 10)
    other = AdaptiveP(interval=2, kimg=1.0)
    other.load_state_dict(ada.state_dict())
    for a in (ada, other):
        a.update(torch.ones(10), 10)
    assert other.p == ada.p == pytest.approx(0.04)


def test_augment_wrapper_kinds():
    x = _images()
    assert Augment("none")(x) is x and Augment("none").p == 0.0
    assert Augment("diffaugment").p == 1.0 and not torch.equal(Augment("diffaugment")(x), x)
    aug = Augment("ada", interval=1, kimg=0.001)
    assert aug.p == 0.0 and aug(x) is x
    aug.observe(torch.ones(8), batch=8)
    assert aug.p > 0
    with pytest.raises(ValueError, match="kind"):
        Augment("rand")

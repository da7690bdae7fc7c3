import math

import pytest
import torch

from models.losses import best_of, d_loss, g_loss, gradient_penalty, r1_penalty

REAL = torch.tensor([2.0, -1.0, 0.0])
FAKE = torch.tensor([-3.0, 0.5, 1.0])


def sp(x):  # softplus in closed form
    return math.log1p(math.exp(x))


def test_logistic_closed_form():
    want_d = [sp(-r) + sp(f) for r, f in zip(REAL.tolist(), FAKE.tolist())]
    torch.testing.assert_close(d_loss("logistic", REAL, FAKE), torch.tensor(want_d))
    # non-saturating: G minimises -log sigmoid(D(G(z))) = softplus(-D(G(z)))
    torch.testing.assert_close(g_loss("logistic", FAKE), torch.tensor([sp(3.0), sp(-0.5), sp(-1.0)]))


def test_hinge_closed_form():
    torch.testing.assert_close(d_loss("hinge", REAL, FAKE), torch.tensor([0.0 + 0.0, 2.0 + 1.5, 1.0 + 2.0]))
    torch.testing.assert_close(g_loss("hinge", FAKE), -FAKE)


def test_wgan_closed_form():
    torch.testing.assert_close(d_loss("wgan-gp", REAL, FAKE), FAKE - REAL)
    torch.testing.assert_close(g_loss("wgan-gp", FAKE), -FAKE)


def test_rpgan_closed_form_pairs_each_real_with_its_fake():
    pairs = list(zip(REAL.tolist(), FAKE.tolist()))
    torch.testing.assert_close(d_loss("rpgan", REAL, FAKE), torch.tensor([sp(f - r) for r, f in pairs]))
    torch.testing.assert_close(g_loss("rpgan", FAKE, REAL), torch.tensor([sp(r - f) for r, f in pairs]))
    # the pairing is by position: shuffling the fakes changes the loss (a mean over all pairs would not)
    assert not torch.allclose(d_loss("rpgan", REAL, FAKE.flip(0)), d_loss("rpgan", REAL, FAKE))
    with pytest.raises(ValueError, match="pass real_logits"):
        g_loss("rpgan", FAKE)


def test_losses_are_fp32_from_bf16_logits():
    assert d_loss("logistic", REAL.bfloat16(), FAKE.bfloat16()).dtype == torch.float32


def _quadratic_d():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    return lambda x: (x.to(w.dtype) @ w * x.to(w.dtype)).sum(1) + torch.sin(x[:, 0].to(w.dtype))


def test_r1_matches_finite_differences():
    D = _quadratic_d()
    x = torch.tensor([[0.3, -0.7], [1.2, 0.4]], dtype=torch.float64)
    eps = 1e-6
    want = []
    for i in range(len(x)):
        g = []
        for j in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[j] = eps
            g.append((D((x[i] + e)[None]) - D((x[i] - e)[None])).item() / (2 * eps))
        want.append(sum(v * v for v in g))
    got = r1_penalty(lambda v: D(v.double()), x)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_r1_is_differentiable_wrt_d_params():
    lin = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    r1 = r1_penalty(lambda x: lin(x).squeeze(1), torch.randn(4, 2)).mean()
    r1.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lin[0].parameters())


def test_gradient_penalty_zero_for_unit_slope_linear_d():
    D = lambda x: x @ torch.tensor([0.6, 0.8])  # |grad| = 1 everywhere
    gp = gradient_penalty(D, torch.randn(5, 2), torch.randn(5, 2))
    torch.testing.assert_close(gp, torch.zeros(5), atol=1e-6, rtol=0)
    D2 = lambda x: x @ torch.tensor([3.0, 4.0])  # |grad| = 5 -> (5-1)^2
    torch.testing.assert_close(gradient_penalty(D2, torch.randn(5, 2), torch.randn(5, 2)), torch.full((5,), 16.0))


def test_best_of_keeps_the_lowest_losses_and_their_mean():
    loss = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2], requires_grad=True)
    kept = best_of(loss, 0.5)
    torch.testing.assert_close(kept.detach(), torch.tensor([0.0, 0.2, 0.0, 0.6, 0.0, 0.4]))
    torch.testing.assert_close(kept.mean(), torch.tensor(0.2))   # mean of 0.1, 0.3, 0.2
    kept.mean().backward()
    torch.testing.assert_close(loss.grad, torch.tensor([0.0, 1, 0, 1, 0, 1]) / 3)
    assert best_of(loss, 1.0) is loss
    assert best_of(loss, 0.01).detach().count_nonzero() == 1   # never fewer than one

"""bias_act: the Triton path (interpreted on CPU) against the reference, to second order."""
import importlib
import warnings

import pytest
import torch

from models.ops import TritonFallbackWarning, bias_act
from models.ops import _dispatch

bias_act_module = importlib.import_module("models.ops.bias_act")  # the package re-exports the function

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "silu"]
# A silent fallback would make the Triton-vs-reference comparisons vacuous.
pytestmark = pytest.mark.filterwarnings("error::models.ops.TritonFallbackWarning")


def close(actual, expected, tol):
    scale = expected.detach().abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol * scale)


def three_orders(x, b, impl, **kw):
    """y, (dx, db) of a nonlinear loss, and (dx, db) of a loss on the first gradients."""
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True) if b is not None else None
    inputs = [x] + ([b] if b is not None else [])
    y = bias_act(x, b, impl=impl, **kw)
    # Squaring y makes the first gradient depend on x even for act='linear'.
    g = torch.autograd.grad((y.float() ** 2 * torch.linspace(-1, 2, y.numel()).reshape(y.shape)).sum(),
                            inputs, create_graph=True)
    gg = torch.autograd.grad(sum((t.float() ** 2).sum() for t in g), inputs, allow_unused=True)
    gg = [t if t is not None else torch.zeros_like(i) for t, i in zip(gg, inputs)]
    return [y, *g, *gg]


def compare(x, b, tol, **kw):
    for got, want in zip(three_orders(x, b, "triton", **kw), three_orders(x, b, "ref", **kw)):
        assert got.dtype == want.dtype and got.shape == want.shape
        close(got, want, tol)


@pytest.mark.parametrize("act", ACTS)
def test_triton_matches_reference_fp32(act):
    torch.manual_seed(0)
    x, b = torch.randn(3, 5, 7, 9), torch.randn(5)
    compare(x, b, 1e-5, act=act)
    compare(x, b, 1e-5, act=act, clamp=0.8, gain=1.3, alpha=0.1)


@pytest.mark.parametrize("layout", ["transposed", "strided", "channels_last", "last_dim"])
def test_triton_handles_layouts(layout):
    torch.manual_seed(1)
    base = torch.randn(4, 6, 5, 7)
    x, dim = {
        "transposed": (base.transpose(2, 3), 1),
        "strided": (base[:, ::2, 1:, ::3], 1),
        "channels_last": (base.contiguous(memory_format=torch.channels_last), 1),
        "last_dim": (base, 3),
    }[layout]
    compare(x, torch.randn(x.shape[dim]), 1e-5, dim=dim, act="silu", clamp=1.0)
    if layout == "channels_last":
        assert bias_act(x, None, act="tanh", impl="triton").is_contiguous(memory_format=torch.channels_last)


def test_triton_without_bias_and_on_2d_input():
    torch.manual_seed(2)
    compare(torch.randn(13, 11), None, 1e-5, act="sigmoid")
    compare(torch.randn(13, 11), torch.randn(11), 1e-5, act="lrelu")


@pytest.mark.parametrize("act", ["lrelu", "silu", "tanh"])
def test_triton_bf16_loads_bf16_and_computes_fp32(act):
    torch.manual_seed(3)
    x, b = torch.randn(2, 8, 9, 5).bfloat16(), torch.randn(8)
    y = bias_act(x, b, act=act, clamp=2.0, impl="triton")
    assert y.dtype == torch.bfloat16
    # The kernel computes in fp32, so it is within bf16 rounding of the fp32 reference...
    close(y, bias_act(x.float(), b, act=act, clamp=2.0, impl="ref"), 1e-2)
    # ...and within a few bf16 roundings of the bf16 reference, at every order.
    compare(x, b, 5e-2, act=act, clamp=2.0)


@pytest.mark.parametrize("act", ACTS)
def test_reference_gradcheck_and_gradgradcheck_fp64(act):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, clamp=1.5, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bad_arguments_name_the_problem():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="unknown act 'gelu2'"):
        bias_act(x, act="gelu2")
    with pytest.raises(ValueError, match=r"b must have shape \[3\]"):
        bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="impl must be one of"):
        bias_act(x, impl="cuda")
    with pytest.raises(ValueError, match="dim 2 out of range"):
        bias_act(x, dim=2)


@pytest.fixture
def pretend_gpu(monkeypatch):
    """Make impl='auto' choose Triton for CPU tensors, with a clean record of failed ops."""
    monkeypatch.setattr(_dispatch, "_wants_triton", lambda x: True)
    monkeypatch.setattr(_dispatch, "_failed_ops", set())


@pytest.mark.filterwarnings("default::models.ops.TritonFallbackWarning")
def test_failing_kernel_falls_back_to_reference_with_one_warning(pretend_gpu, monkeypatch):
    monkeypatch.setattr(bias_act_module, "_bias_act_kernel", _Unlaunchable())
    x, b = torch.randn(4, 3, 5), torch.randn(3)
    with pytest.warns(TritonFallbackWarning, match="bias_act: Triton kernel unavailable .*PTX compilation failed"):
        y = bias_act(x, b, act="lrelu")
    torch.testing.assert_close(y, bias_act(x, b, act="lrelu", impl="ref"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(bias_act(x, b, act="tanh"), bias_act(x, b, act="tanh", impl="ref"))
    with pytest.raises(RuntimeError, match="PTX compilation failed"):
        bias_act(x, b, impl="triton")  # an explicit request never hides the failure


@pytest.mark.filterwarnings("default::models.ops.TritonFallbackWarning")
def test_missing_triton_falls_back_under_auto_and_fails_clearly_when_asked(pretend_gpu, monkeypatch):
    monkeypatch.setattr(_dispatch, "triton", None)
    monkeypatch.setattr(_dispatch, "_TRITON_ERROR", ImportError("No module named 'triton'"))
    x = torch.randn(2, 3)
    with pytest.warns(TritonFallbackWarning, match="No module named 'triton'"):
        torch.testing.assert_close(bias_act(x, act="relu"), bias_act(x, act="relu", impl="ref"))
    with pytest.raises(RuntimeError, match="impl='triton' but triton cannot be imported"):
        bias_act(x, impl="triton")


class _Unlaunchable:
    """Stands in for a kernel whose compilation fails: indexing by grid then calling raises."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("PTX compilation failed")
        return launch

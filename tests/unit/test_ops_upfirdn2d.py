"""upfirdn2d: the Triton path (interpreted on CPU) against the reference, to second order."""
import importlib

import pytest
import torch

from models.ops import TritonFallbackWarning, downsample2d, setup_filter, upfirdn2d, upsample2d
from models.ops import _dispatch

upfirdn2d_module = importlib.import_module("models.ops.upfirdn2d")  # the package re-exports the function
pytestmark = pytest.mark.filterwarnings("error::models.ops.TritonFallbackWarning")

BLUR = setup_filter([1, 3, 3, 1])
CASES = {  # up, down, padding, filter, flip_filter
    "filter_only": (1, 1, 0, BLUR, False),
    "up2": (2, 1, (2, 1, 2, 1), BLUR, False),
    "down2": (1, 2, 1, BLUR, False),
    "odd_filter_negative_pad": ((2, 1), (1, 3), (1, -1, 0, 2), torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), False),
    "up3_down2_flipped": (3, 2, (-1, 2, 1, 1), torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), True),
}


def close(actual, expected, tol):
    scale = expected.detach().abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol * scale)


def three_orders(x, impl, up, down, padding, f, flip_filter):
    x = x.detach().requires_grad_(True)
    y = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=1.5, impl=impl)
    (g,) = torch.autograd.grad((y.float() ** 2).sum(), [x], create_graph=True)
    (gg,) = torch.autograd.grad((g.float() ** 2 * torch.linspace(-1, 1, g.numel()).reshape(g.shape)).sum(), [x])
    return y, g, gg


def compare(x, tol, case):
    for got, want in zip(three_orders(x, "triton", *case), three_orders(x, "ref", *case)):
        assert got.dtype == want.dtype and got.shape == want.shape
        close(got, want, tol)


@pytest.mark.parametrize("name", CASES)
def test_triton_matches_reference_fp32(name):
    torch.manual_seed(0)
    compare(torch.randn(2, 3, 7, 6), 1e-5, CASES[name])


@pytest.mark.parametrize("layout", ["channels_last", "strided", "expanded"])
def test_triton_reads_any_strides(layout):
    torch.manual_seed(1)
    base = torch.randn(2, 4, 9, 10)
    x = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": base[:, 1:, ::2, 1::3],
        "expanded": base[:1].expand(3, -1, -1, -1),
    }[layout]
    compare(x, 1e-5, CASES["up2"])
    compare(x, 1e-5, CASES["down2"])


@pytest.mark.parametrize("name", ["up2", "down2"])
def test_triton_bf16_loads_bf16_and_accumulates_fp32(name):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8).bfloat16()
    up, down, padding, f, flip = CASES[name]
    y = upfirdn2d(x, f, up=up, down=down, padding=padding, impl="triton")
    assert y.dtype == torch.bfloat16
    close(y, upfirdn2d(x.float(), f, up=up, down=down, padding=padding, impl="ref"), 1e-2)
    compare(x, 5e-2, CASES[name])


@pytest.mark.parametrize("name", ["up2", "odd_filter_negative_pad", "up3_down2_flipped"])
def test_reference_gradcheck_and_gradgradcheck_fp64(name):
    up, down, padding, f, flip = CASES[name]
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x: upfirdn2d(x, f.double(), up, down, padding, flip, gain=1.5, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_resampling_helpers_keep_sizes_and_constant_images():
    ones = torch.ones(1, 2, 8, 8)
    for impl in ["ref", "triton"]:
        up, down = upsample2d(ones, BLUR, impl=impl), downsample2d(ones, BLUR, impl=impl)
        assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
        # Away from the zero-padded border a constant stays constant.
        close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]), 1e-6)
        close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]), 1e-6)
    torch.testing.assert_close(BLUR.sum(), torch.tensor(1.0))
    torch.testing.assert_close(BLUR, BLUR.t())


def test_bad_arguments_name_the_problem():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"x must be \[N, C, H, W\]"):
        upfirdn2d(x[0], BLUR)
    with pytest.raises(ValueError, match="up must be a positive int"):
        upfirdn2d(x, BLUR, up=0)
    with pytest.raises(ValueError, match="output would be 0x0"):
        upfirdn2d(x, torch.ones(5, 5))
    with pytest.raises(ValueError, match="padding must be"):
        upfirdn2d(x, BLUR, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="f must not require grad"):
        upfirdn2d(x, BLUR.clone().requires_grad_(True))


class _Unlaunchable:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("out of resources: shared memory")
        return launch


@pytest.mark.filterwarnings("default::models.ops.TritonFallbackWarning")
def test_failing_kernel_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(_dispatch, "_wants_triton", lambda x: True)  # auto now picks Triton on CPU
    monkeypatch.setattr(_dispatch, "_failed_ops", set())
    monkeypatch.setattr(upfirdn2d_module, "_upfirdn2d_kernel", _Unlaunchable())
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(TritonFallbackWarning) as record:
        y1 = upsample2d(x, BLUR)
        y2 = upsample2d(x, BLUR)
    assert len(record) == 1 and "upfirdn2d" in str(record[0].message)
    torch.testing.assert_close(y1, upsample2d(x, BLUR, impl="ref"))
    torch.testing.assert_close(y2, y1)

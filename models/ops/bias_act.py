"""Fused bias + activation + gain + clamp.

    y = clamp(act(x + b) * gain, -clamp, clamp)

Contract of `bias_act(x, b, dim, act, alpha, gain, clamp, impl)`:
- x: any shape and float dtype; b: None or a 1-D tensor of length x.shape[dim], added along `dim`.
- act: one of ACTIVATIONS; alpha is the lrelu slope (default 0.2, ignored by the others);
  gain defaults to the activation's variance-preserving gain (sqrt(2) for relu/lrelu/silu);
  clamp: None or a non-negative bound applied after the gain.
- The result has x's dtype and shape. The Triton kernels load bf16/fp16 and compute in fp32; the
  reference computes in x's dtype, so the two agree to the rounding of x's dtype.
- Gradients flow to x and b, to first and second order (R1 differentiates D's activations).
  The Triton path's backward is itself an autograd.Function, whose backward gives the second
  order; a third order is not supported there (the reference supports any order).
- impl: 'auto' | 'ref' | 'triton', see models/ops/_dispatch.py.

`_bias_act_ref` is the spec; the Triton path is tested against it.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ._dispatch import block_size, dispatch, tl, triton


class Activation(NamedTuple):
    code: int  # the kernel's constexpr selector
    fn: Callable[[torch.Tensor, float], torch.Tensor]
    def_gain: float
    zero_second_derivative: bool  # piecewise linear: the second-order kernel can be skipped


ACTIVATIONS = {
    "linear": Activation(0, lambda x, a: x, 1.0, True),
    "relu": Activation(1, lambda x, a: F.relu(x), math.sqrt(2), True),
    "lrelu": Activation(2, lambda x, a: F.leaky_relu(x, a), math.sqrt(2), True),
    "tanh": Activation(3, lambda x, a: torch.tanh(x), 1.0, False),
    "sigmoid": Activation(4, lambda x, a: torch.sigmoid(x), 1.0, False),
    "silu": Activation(5, lambda x, a: F.silu(x), math.sqrt(2), False),
}
DEFAULT_ALPHA = 0.2


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = ACTIVATIONS[act].fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# Triton kernels. Both work on the flat storage of a dense tensor, so the channel of the element
# at flat offset o is (o // stride[dim]) % C whatever the memory format (NCHW or channels_last).

if triton is not None:

    @triton.jit
    def _act_derivative(z, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
        """ORDER-th derivative (0, 1 or 2) of the activation at z, in fp32."""
        one = tl.full(z.shape, 1.0, tl.float32)
        zero = tl.zeros(z.shape, tl.float32)
        if ACT == 0:  # linear
            if ORDER == 0:
                r = z
            elif ORDER == 1:
                r = one
            else:
                r = zero
        elif ACT == 1:  # relu
            if ORDER == 0:
                r = tl.maximum(z, 0.0)
            elif ORDER == 1:
                r = tl.where(z > 0, one, zero)
            else:
                r = zero
        elif ACT == 2:  # lrelu
            if ORDER == 0:
                r = tl.where(z > 0, z, z * alpha)
            elif ORDER == 1:
                r = tl.where(z > 0, one, one * alpha)
            else:
                r = zero
        elif ACT == 3:  # tanh, written through the sigmoid: tanh(z) = 2 sigmoid(2z) - 1
            t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
            if ORDER == 0:
                r = t
            elif ORDER == 1:
                r = 1.0 - t * t
            else:
                r = -2.0 * t * (1.0 - t * t)
        elif ACT == 4:  # sigmoid
            s = tl.sigmoid(z)
            if ORDER == 0:
                r = s
            elif ORDER == 1:
                r = s * (1.0 - s)
            else:
                r = s * (1.0 - s) * (1.0 - 2.0 * s)
        else:  # silu = z * sigmoid(z)
            s = tl.sigmoid(z)
            if ORDER == 0:
                r = z * s
            elif ORDER == 1:
                r = s * (1.0 + z * (1.0 - s))
            else:
                r = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
        return r

    @triton.jit
    def _bias_act_kernel(x_ptr, b_ptr, g_ptr, out_ptr, n, C, inner, alpha, gain, clamp,
                         ACT: tl.constexpr, ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr):
        """ORDER 0: out = clamp(gain * act(x + b)).
        ORDER k > 0: out = g * gain * act^(k)(x + b), zero where the clamp was active."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z += tl.load(b_ptr + (offs // inner) % C, mask=mask, other=0.0).to(tl.float32)
        if ORDER == 0:
            out = _act_derivative(z, alpha, ACT, 0) * gain
            if HAS_CLAMP:
                out = tl.minimum(tl.maximum(out, -clamp), clamp)
        else:
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            out = g * _act_derivative(z, alpha, ACT, ORDER) * gain
            if HAS_CLAMP:
                y = _act_derivative(z, alpha, ACT, 0) * gain
                out = tl.where(tl.abs(y) <= clamp, out, 0.0)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


_BLOCK = block_size(1024)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _launch(x, b, g, cfg, order):
    """Run the kernel on x (and gradient g of x's shape), keeping x's memory format."""
    fmt = _memory_format(x)
    x = x.contiguous(memory_format=fmt)
    g = g.contiguous(memory_format=fmt) if g is not None else None
    out = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return out
    dim, act, alpha, gain, clamp = cfg
    _bias_act_kernel[(triton.cdiv(x.numel(), _BLOCK),)](
        x, b if b is not None else x, g if g is not None else x, out,
        x.numel(), x.shape[dim], x.stride(dim), alpha, gain, clamp if clamp is not None else 0.0,
        ACT=ACTIVATIONS[act].code, ORDER=order, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
        BLOCK=_BLOCK)
    return out


def _sum_to_bias(d, b, dim, needed):
    if not needed:
        return None
    return d.sum(dim=[i for i in range(d.ndim) if i != dim], dtype=torch.float32).to(b.dtype)


class _BiasActTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return _launch(x, b, None, cfg, order=0)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = _BiasActGradTriton.apply(dy, x, b, ctx.cfg)
        return dx, _sum_to_bias(dx, b, ctx.cfg[0], ctx.needs_input_grad[1]), None


class _BiasActGradTriton(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) * [not clamped]; linear in dy, so its own backward is cheap."""

    @staticmethod
    def forward(ctx, dy, x, b, cfg):
        ctx.save_for_backward(dy, x, b)
        ctx.cfg = cfg
        return _launch(x, b, dy, cfg, order=1)

    @staticmethod
    def backward(ctx, ddx):
        dy, x, b = ctx.saved_tensors
        dim, act = ctx.cfg[:2]
        d_dy = _BiasActGradTriton.apply(ddx, x, b, ctx.cfg) if ctx.needs_input_grad[0] else None
        if ACTIVATIONS[act].zero_second_derivative or not any(ctx.needs_input_grad[1:3]):
            return d_dy, None, None, None
        dz = _launch(x, b, ddx * dy, ctx.cfg, order=2)
        return d_dy, dz, _sum_to_bias(dz, b, dim, ctx.needs_input_grad[2]), None


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """clamp(act(x + b) * gain): see the module docstring for the full contract."""
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown act {act!r}; expected one of {sorted(ACTIVATIONS)}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim {dim} out of range for a {x.ndim}-D input")
    dim %= x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias_act: b must have shape [{x.shape[dim]}] (x.shape[{dim}]), got {list(b.shape)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    alpha = float(DEFAULT_ALPHA if alpha is None else alpha)
    gain = float(ACTIVATIONS[act].def_gain if gain is None else gain)
    clamp = None if clamp is None else float(clamp)
    cfg = (dim, act, alpha, gain, clamp)
    return dispatch("bias_act", impl, x,
                    lambda: _BiasActTriton.apply(x, b, cfg),
                    lambda: _bias_act_ref(x, b, *cfg))

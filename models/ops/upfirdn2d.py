"""Fused upsample (zero insertion) + pad + 2-D FIR filter + downsample.

Contract of `upfirdn2d(x, f, up, down, padding, flip_filter, gain, impl)`:
- x: [N, C, H, W], any float dtype and strides; f: a 2-D filter [fh, fw] (see `setup_filter`)
  or None for the identity. f never receives a gradient.
- up, down: int or (x, y); padding: int, (px, py) or (px0, px1, py0, py1), negative crops.
- Steps, in order: insert up-1 zeros after every pixel; pad (crop where negative); convolve
  every channel with f * gain (a true convolution, i.e. f flipped, unless flip_filter=True);
  keep every down-th pixel. Output side: (H * up + p0 + p1 - fh) // down + 1.
- Result has x's dtype; the Triton kernel loads bf16/fp16 and accumulates in fp32.
- Gradients to x of any order: the gradient of upfirdn2d is another upfirdn2d (up and down
  swapped, filter flipped, padding mirrored), computed by the same autograd.Function.
- impl: 'auto' | 'ref' | 'triton', see models/ops/_dispatch.py.

`_upfirdn2d_ref` is the spec; the Triton path is tested against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import block_size, dispatch, tl, triton


def _pair(v, name):
    v = (v, v) if isinstance(v, int) else tuple(v)
    if len(v) != 2 or any(not isinstance(i, int) or i < 1 for i in v):
        raise ValueError(f"upfirdn2d: {name} must be a positive int or a pair of them, got {v}")
    return v


def _padding(p):
    p = (p,) * 4 if isinstance(p, int) else tuple(p)
    if len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    if len(p) != 4 or any(not isinstance(i, int) for i in p):
        raise ValueError(f"upfirdn2d: padding must be an int, (px, py) or (px0, px1, py0, py1), got {p}")
    return p


def _upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain):
    N, C, H, W = x.shape
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(N, C, H * upy, W * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * gain).to(device=x.device, dtype=x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    x = F.conv2d(x, f[None, None].repeat(C, 1, 1, 1), groups=C)
    return x[:, :, ::downy, ::downx]


# ---------------------------------------------------------------------------------------------
# Triton kernel: one lane per output pixel, gathering its fh*fw taps straight from x (no padded
# or upsampled copy is ever built). Taps that land on inserted zeros or padding are masked.

if triton is not None:

    @triton.jit
    def _upfirdn2d_kernel(x_ptr, w_ptr, y_ptr, n, C, H, W, OH, OW, sn, sc, sh, sw, px0, py0,
                          UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr,
                          DOWNY: tl.constexpr, FH: tl.constexpr, FW: tl.constexpr,
                          BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        ox = offs % OW
        oy = (offs // OW) % OH
        nc = offs // (OW * OH)
        base = x_ptr + (nc // C) * sn + (nc % C) * sc
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for ky in tl.static_range(FH):
            uy = oy * DOWNY + ky - py0  # row in the zero-inserted image
            ok_y = (uy >= 0) & (uy < H * UPY)
            uy = tl.where(ok_y, uy, 0)  # keep // and % away from negatives
            ok_y = ok_y & (uy % UPY == 0)
            for kx in tl.static_range(FW):
                ux = ox * DOWNX + kx - px0
                ok = ok_y & (ux >= 0) & (ux < W * UPX)
                ux = tl.where(ok, ux, 0)
                ok = ok & (ux % UPX == 0)
                v = tl.load(base + (uy // UPY) * sh + (ux // UPX) * sw, mask=mask & ok, other=0.0)
                acc += v.to(tl.float32) * tl.load(w_ptr + ky * FW + kx)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


_BLOCK = block_size(256)


def _out_size(x, f, up, down, pad):
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    oh = (x.shape[2] * upy + py0 + py1 - f.shape[0]) // downy + 1
    ow = (x.shape[3] * upx + px0 + px1 - f.shape[1]) // downx + 1
    return oh, ow


def _launch(x, f, up, down, pad, flip_filter, gain):
    N, C, H, W = x.shape
    OH, OW = _out_size(x, f, up, down, pad)
    w = (f.float() if flip_filter else f.float().flip([0, 1])) * gain
    w = w.contiguous().to(x.device)
    y = torch.empty(N, C, OH, OW, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _upfirdn2d_kernel[(triton.cdiv(y.numel(), _BLOCK),)](
        x, w, y, y.numel(), C, H, W, OH, OW, *x.stride(), pad[0], pad[2],
        UPX=up[0], UPY=up[1], DOWNX=down[0], DOWNY=down[1], FH=f.shape[0], FW=f.shape[1],
        BLOCK=_BLOCK)
    return y


class _UpFirDn2dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, pad, flip_filter, gain):
        ctx.save_for_backward(f)
        ctx.cfg = (up, down, pad, flip_filter, gain)
        ctx.in_hw = x.shape[2:]
        return _launch(x, f, up, down, pad, flip_filter, gain)

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        (up, down, pad, flip_filter, gain), (H, W) = ctx.cfg, ctx.in_hw
        fh, fw = f.shape
        OH, OW = dy.shape[2:]
        # Transpose: swap up/down, flip the filter, and pad so the output is H x W again.
        grad_pad = (fw - pad[0] - 1, W * up[0] - OW * down[0] + pad[0] - up[0] + 1,
                    fh - pad[2] - 1, H * up[1] - OH * down[1] + pad[2] - up[1] + 1)
        dx = _UpFirDn2dTriton.apply(dy, f, down, up, grad_pad, not flip_filter, gain)
        return dx, None, None, None, None, None, None


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample, pad, FIR-filter and downsample a batch of images: see the module docstring."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be [N, C, H, W], got shape {list(x.shape)}")
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    if f.ndim != 2 or not f.is_floating_point():
        raise ValueError(f"upfirdn2d: f must be a 2-D float filter, got {f.dtype} of shape {list(f.shape)}")
    if f.requires_grad:
        raise ValueError("upfirdn2d: f must not require grad (filters are fixed)")
    up, down, pad = _pair(up, "up"), _pair(down, "down"), _padding(padding)
    oh, ow = _out_size(x, f, up, down, pad)
    if oh < 1 or ow < 1:
        raise ValueError(f"upfirdn2d: output would be {oh}x{ow} for input {list(x.shape)}, filter "
                         f"{list(f.shape)}, up {up}, down {down}, padding {pad}")
    return dispatch("upfirdn2d", impl, x,
                    lambda: _UpFirDn2dTriton.apply(x, f, up, down, pad, flip_filter, gain),
                    lambda: _upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain))


def setup_filter(f, normalize=True, flip_filter=False, gain=1, device=None):
    """A 2-D float32 filter from a 1-D list (outer product, i.e. separable) or a 2-D one.

    normalize makes its taps sum to 1 (before the gain), so filtering keeps a constant image
    constant; [1, 3, 3, 1] is StyleGAN2's resampling filter.
    """
    f = torch.as_tensor(f, dtype=torch.float32, device=device)
    if f.ndim == 1:
        f = f.ger(f)
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"setup_filter: expected a 1-D or 2-D filter, got shape {list(f.shape)}")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip([0, 1])
    return f * gain


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample by `up` with filter f; the output is exactly up times larger (before padding)."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = _padding(padding)
    fh, fw = f.shape
    pad = (px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2)
    # Zero insertion scales the mean by 1/(upx*upy); the gain restores it.
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Low-pass with f, then keep every `down`-th pixel; an even side is divided exactly."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding(padding)
    fh, fw = f.shape
    pad = (px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
           py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2)
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

"""Choosing between an op's Triton kernels and its PyTorch reference.

Contract shared by every op in models/ops:
- impl='ref'    always runs the reference.
- impl='triton' always runs the Triton kernels; errors propagate (tests and benchmarks must
                know they measured the kernels, not a silent fallback). On CPU tensors this
                needs TRITON_INTERPRET=1 set before models.ops is first imported.
- impl='auto'   runs Triton on CUDA tensors and the reference elsewhere. If Triton is missing
                or a kernel fails, it warns once (TritonFallbackWarning) and uses the reference
                for that op from then on: a broken Triton install must never stop training.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

try:
    import triton
    import triton.language as tl
    _TRITON_ERROR: Exception | None = None
except Exception as e:  # ImportError, or a broken install raising at import time
    triton, tl = None, None
    _TRITON_ERROR = e

IMPLS = ("auto", "ref", "triton")


def block_size(gpu_block: int) -> int:
    """Lanes per program. The interpreter pays a fixed Python cost per program and per op, not
    per lane, so it runs far fewer, far larger blocks than a GPU wants."""
    return max(gpu_block, 16384) if os.environ.get("TRITON_INTERPRET") == "1" else gpu_block


class TritonFallbackWarning(RuntimeWarning):
    """A Triton kernel could not run; the op now uses its PyTorch reference."""


_failed_ops: set[str] = set()


def check_impl(op: str, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")


def _give_up(op: str, why: str) -> None:
    _failed_ops.add(op)
    warnings.warn(f"{op}: Triton kernel unavailable ({why}); using the PyTorch reference from now on",
                  TritonFallbackWarning, stacklevel=4)


def _wants_triton(x: torch.Tensor) -> bool:
    return x.is_cuda


def dispatch(op: str, impl: str, x: torch.Tensor, triton_fn: Callable, ref_fn: Callable):
    """Run `triton_fn()` or `ref_fn()` for tensor `x` following the contract above.

    Callers validate their arguments before this, so an exception from `triton_fn` under
    impl='auto' is a kernel failure, not bad input.
    """
    check_impl(op, impl)
    if impl == "ref":
        return ref_fn()
    if impl == "triton":
        if triton is None:
            raise RuntimeError(f"{op}: impl='triton' but triton cannot be imported ({_TRITON_ERROR})")
        return triton_fn()
    if not _wants_triton(x) or op in _failed_ops:
        return ref_fn()
    if triton is None:
        _give_up(op, f"import failed: {_TRITON_ERROR}")
        return ref_fn()
    try:
        return triton_fn()
    except torch.OutOfMemoryError:
        raise  # the reference would need the memory too
    except Exception as e:
        _give_up(op, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return ref_fn()

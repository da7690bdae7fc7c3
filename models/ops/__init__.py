"""Fused kernels: one file per op, each with a PyTorch reference (the spec), Triton kernels and
one public function that dispatches with impl='auto' | 'ref' | 'triton' (see _dispatch.py)."""
from ._dispatch import TritonFallbackWarning
from .bias_act import ACTIVATIONS, bias_act
from .upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["ACTIVATIONS", "TritonFallbackWarning", "bias_act", "downsample2d", "setup_filter",
           "upfirdn2d", "upsample2d"]

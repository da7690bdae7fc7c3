"""Paired sources for image-to-image translation (`gantry shards build SOURCE OUT --pairs`).

A sample is two images of one scene, A (the input) and B (the target), fitted to the shard
resolution by the same transform. Three sources:

- a folder with sub-folders `A/` and `B/` whose files pair up by relative path;
- a folder of pix2pix's side-by-side images: the left half of each is A, the right half B;
- `mnist-edges`: each MNIST digit (B) with its edge map (A), labelled by the digit, with
  MNIST's test set held out as `mnist` holds it out.

A file without its partner, an A and a B of different sizes, or a side-by-side image of odd
width is a bad item: the build's `--on-error` policy decides about it, as about a file that
does not decode.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.errors import GantryError
from pipeline.shards.sources import IMAGE_EXTS, Source, UnreadableItem, file_channels, load_item, load_source

PAIR_BUILTINS = ("mnist-edges",)
INK = 128   # an MNIST pixel at or above this is part of the digit's stroke


class FilePair(NamedTuple):
    """One sample's A and B image files; None where a file has no partner."""
    a: Path | None
    b: Path | None

    def __fspath__(self) -> str:
        """The file a report names: A, or B when A is missing."""
        return os.fspath(self.a if self.a is not None else self.b)


class SideBySide(NamedTuple):
    """One image file whose left half is A and right half is B."""
    path: Path

    def __fspath__(self) -> str:
        return os.fspath(self.path)


class Outlined(NamedTuple):
    """A digit (B) whose A is its `edge_map`, drawn in the build worker that encodes it."""
    digit: np.ndarray


def load_pair(item: FilePair | SideBySide | Outlined, channels_a: int,
              channels_b: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of one item as uint8 (H, W, C) arrays of equal size; UnreadableItem says why not."""
    if isinstance(item, Outlined):
        return edge_map(item.digit[None])[0], item.digit
    if isinstance(item, SideBySide):   # one image: A has B's channels
        ab = load_item(item.path, channels_b)
        half, odd = divmod(ab.shape[1], 2)
        if odd:
            raise UnreadableItem(f"side-by-side image of odd width {ab.shape[1]}: its halves A and B "
                                 f"cannot be the same size")
        return ab[:, :half], ab[:, half:]
    for image, side in ((item.a, "A"), (item.b, "B")):
        if image is None:
            raise UnreadableItem(f"no partner in {side}/ (pairs are matched by their path below A/ and B/)")
    a, b = load_item(item.a, channels_a), load_item(item.b, channels_b)
    if a.shape[:2] != b.shape[:2]:
        raise UnreadableItem(f"A is {a.shape[0]}x{a.shape[1]} but its partner in B/ is {b.shape[0]}x{b.shape[1]}")
    return a, b


def load_pair_source(spec: str) -> Source:
    """Resolve a paired SOURCE as typed on the command line."""
    if spec == "mnist-edges":
        return _mnist_edges()
    p = Path(spec)
    if p.is_dir():
        return _a_b_folders(p) if (p / "A").is_dir() and (p / "B").is_dir() else _side_by_side(p)
    if p.exists():
        raise GantryError(f"{spec}: unsupported paired source (want a folder with A/ and B/, a folder of "
                          f"side-by-side AB images, or one of {', '.join(PAIR_BUILTINS)})")
    raise GantryError(f"{spec}: no such folder, and not a built-in paired source ({', '.join(PAIR_BUILTINS)})")


def _images_below(folder: Path) -> dict[str, Path]:
    """Image files anywhere below FOLDER, by path relative to it."""
    return {f.relative_to(folder).as_posix(): f for f in folder.rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS}


def _a_b_folders(root: Path) -> Source:
    """Pairs by relative path; a file on one side only stays an item, so that the build reports
    it under its --on-error policy. Unlabelled."""
    a, b = _images_below(root / "A"), _images_below(root / "B")
    if not a and not b:
        raise GantryError(f"{root}: no images in A/ or B/")
    items = [FilePair(a.get(rel), b.get(rel)) for rel in sorted(a.keys() | b.keys())]
    return Source(root.name, f"paired folders {root.resolve()} (A/, B/)", items, np.zeros(len(items), np.int64),
                  {}, file_channels(list(b.values())), root, channels_a=file_channels(list(a.values())))


def _side_by_side(root: Path) -> Source:
    """The image files directly in ROOT, sorted by name. Unlabelled."""
    files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not files:
        # pix2pix's downloads keep train/, val/ and test/ side by side: taking them all would
        # train on the test images.
        raise GantryError(f"{root}: no side-by-side AB images directly in it (and no A/ and B/ sub-folders); "
                          f"point at the folder that holds them (pix2pix's downloads keep them in train/, val/ "
                          f"and test/)")
    channels = file_channels(files)
    return Source(root.name, f"side-by-side AB images {root.resolve()}", [SideBySide(f) for f in files],
                  np.zeros(len(files), np.int64), {}, channels, root, channels_a=channels)


def edge_map(images: np.ndarray) -> np.ndarray:
    """The outer outline of the strokes of uint8 (N, H, W, 1) images: 255 on every pixel that
    touches a stroke pixel (>= INK, 8-neighbourhood) without being one, else 0.

    A morphological gradient (dilation minus the set) of the thresholded digit: a thin line
    drawing that never covers the stroke itself, so G must learn to fill it in.
    """
    ink = images >= INK
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # The 3x3 dilation as a row pass then a column pass: 4 ORs instead of 8.
    rows = padded[:, :, :-2] | padded[:, :, 1:-1] | padded[:, :, 2:]
    grown = rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]
    return np.where(grown & ~ink, 255, 0).astype(np.uint8)


def _mnist_edges() -> Source:
    digits = load_source("mnist", 28)
    return dataclasses.replace(
        digits, name="mnist-edges", items=[Outlined(d) for d in digits.items], channels_a=1,
        description=f"mnist-edges (A: outer outline of the strokes >= {INK}, B: the digit; {digits.description})")

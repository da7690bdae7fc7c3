"""Pixels in and out of shards: fit an image to the shard resolution, PNG encode and decode.

Images travel as uint8 arrays of shape (H, W, C), C in {1, 3}.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.errors import GantryError

FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "lanczos": Image.Resampling.LANCZOS}
_MODES = {1: "L", 3: "RGB"}
PAIR = ("a.png", "b.png")   # a paired sample's images, A then B, by their extension in the tar


def transform_name(pad: bool, filter: str) -> str:
    if filter not in FILTERS:
        raise GantryError(f"unknown resize filter '{filter}' (choose from {', '.join(FILTERS)})")
    return "pad" if pad else f"resize:{filter}"


def fit(img: np.ndarray, resolution: int, transform: str) -> np.ndarray:
    """Bring one (H, W, C) image to (R, R, C).

    "pad" zero-pads around the centre and leaves every source pixel unchanged (MNIST 28 -> 32);
    "resize:<filter>" centre-crops to a square, then resamples with the named PIL filter.
    """
    h, w, c = img.shape
    if transform == "pad":
        if h > resolution or w > resolution:
            raise GantryError(f"cannot pad a {h}x{w} image to {resolution}x{resolution}; "
                              f"resize it instead (drop --pad)")
        out = np.zeros((resolution, resolution, c), np.uint8)
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out[top:top + h, left:left + w] = img
        return out
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top:top + side, left:left + side]
    if side == resolution:
        return np.ascontiguousarray(img)
    pil = Image.fromarray(img[..., 0] if c == 1 else img, _MODES[c])
    out = np.asarray(pil.resize((resolution, resolution), FILTERS[transform.split(":", 1)[1]]))
    return out.reshape(resolution, resolution, c)


def fit_steps(h: int, w: int, resolution: int, transform: str) -> tuple[str, ...]:
    """What `fit` does to an h x w image: some of "centre-cropped", "resized", "padded"."""
    if transform == "pad":
        return ("padded",) if (h, w) != (resolution, resolution) else ()
    return (("centre-cropped",) if h != w else ()) + (("resized",) if min(h, w) != resolution else ())


def describe_fits(counts: dict[str, int], resolution: int, transform: str) -> str:
    """Counts of `fit_steps` as words, so that a build says what it did to the user's pixels."""
    size = f"{resolution}x{resolution}"
    phrases = {"centre-cropped": ("non-square image", "centre-cropped to a square"),
               "resized": ("image", f"resized to {size} ({transform.partition(':')[2]} filter)"),
               "padded": ("image", f"zero-padded to {size}")}
    parts = [f"{n} {noun}{'' if n == 1 else 's'} {verb}"
             for step, (noun, verb) in phrases.items() if (n := counts.get(step, 0))]
    return ", ".join(parts) or f"every image was already {size}"


def encode_png(img: np.ndarray) -> bytes:
    """Lossless and byte-for-byte deterministic for a given Pillow/zlib: no timestamps, fixed level."""
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[2] == 1 else img, _MODES[img.shape[2]]).save(
        buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes, resolution: int, channels: int) -> np.ndarray:
    """PNG bytes -> (R, R, C) uint8. Raises ValueError saying what is wrong with the sample."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as e:  # Pillow raises many types for corrupt files
        raise ValueError(f"undecodable image ({type(e).__name__}: {e})") from None
    if mode != _MODES[channels]:
        raise ValueError(f"image mode {mode}, expected {_MODES[channels]}")
    arr = arr.reshape(arr.shape[0], arr.shape[1], channels)
    if arr.shape != (resolution, resolution, channels):
        raise ValueError(f"image is {arr.shape[0]}x{arr.shape[1]}, expected {resolution}x{resolution}")
    return arr


def decode_sample(files: dict, resolution: int, channels: int, labels) -> tuple[np.ndarray, int]:
    """A grouped shard sample ({ext: bytes}) -> (image, label). ValueError says why it is unusable."""
    _require(files, {"png", "cls"})
    label = _label(files["cls"], labels)
    return decode_png(files["png"], resolution, channels), label


def decode_pair(files: dict, resolution: int, channels_a: int, channels_b: int,
                labels) -> tuple[np.ndarray, np.ndarray, int | None]:
    """A grouped paired sample -> (A, B, label), the label None where the shards have no label
    set (LABELS empty). ValueError says why it is unusable."""
    _require(files, {*PAIR} | ({"cls"} if labels else set()))
    label = _label(files["cls"], labels) if labels else None
    return decode_png(files[PAIR[0]], resolution, channels_a), decode_png(files[PAIR[1]], resolution, channels_b), label


def _require(files: dict, names: set[str]) -> None:
    missing = names - files.keys()
    if missing:
        raise ValueError(f"missing {', '.join(sorted(missing))}")


def _label(data: bytes, labels) -> int:
    try:
        label = int(data)
    except ValueError:
        raise ValueError(f"label {data[:20]!r} is not an integer") from None
    if label not in labels:
        raise ValueError(f"label {label} is not in the manifest's label set")
    return label

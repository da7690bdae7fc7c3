"""Small shard sets for the shard and stream tests: indexed images and byte-level surgery."""
from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.shards import build_shards, load_manifest
from pipeline.shards.manifest import sha256_bytes


def indexed_npz(path: Path, n: int, side: int = 8, channels: int = 1) -> Path:
    """Images whose first two pixels spell their index, so a test can tell every sample apart."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    np.savez(path, images=images, labels=np.arange(n) % 3)
    return path


def build_indexed(tmp: Path, n: int = 240, shard_size: int = 20, side: int = 8) -> Path:
    out = tmp / "shards"
    build_shards(str(indexed_npz(tmp / "src.npz", n, side)), out, side, shard_size=shard_size, workers=1)
    return out


def indices(images) -> list[int]:
    """Back from float [-1, 1] to the index the builder wrote into pixels (0,0) and (0,1)."""
    px = ((images[:, 0, 0, :2] + 1) * 127.5).round().long()
    return (px[:, 0] + 256 * px[:, 1]).tolist()


def rewrite_member(out: Path, shard: int, member: str, data: bytes) -> str:
    """Replace one file inside a shard and re-hash it in the manifest, as if built that way."""
    m = load_manifest(out)
    entry = m.shards[shard]
    path = Path(m.path(entry))
    with tarfile.open(path) as tar:
        members = [(i, tar.extractfile(i).read()) for i in tar if i.isreg()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, old in members:
            new = data if info.name == member else old
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))
    path.write_bytes(buf.getvalue())
    refresh_hash(out, shard)
    return entry.url


def refresh_hash(out: Path, shard: int) -> None:
    m = load_manifest(out)
    data = Path(m.path(m.shards[shard])).read_bytes()
    m.shards[shard] = dataclasses.replace(m.shards[shard], bytes=len(data), sha256=sha256_bytes(data))
    m.save()


def first_key(out: Path, shard: int) -> str:
    m = load_manifest(out)
    with tarfile.open(m.path(m.shards[shard])) as tar:
        return tar.next().name.split(".")[0]


def png(path: Path, h: int, w: int, value: int) -> Path:
    """A small grayscale PNG of one value, so that samples can be told apart after fitting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    """A PNG whose header reads (mode, size) but whose pixel data stops halfway."""
    noise = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)   # barely compresses
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def messy_folder(root: Path) -> Path:
    """Class folders a/ and b/ in sorted order: a/0 a/1 good, a/2_trunc.png truncated, b/3 good,
    b/wide.png non-square (good, to be centre-cropped), b/x.jpg a text file."""
    png(root / "a" / "0.png", 40, 40, 10)
    png(root / "a" / "1.png", 40, 40, 20)
    truncated_png(root / "a" / "2_trunc.png")
    png(root / "b" / "3.png", 40, 40, 30)
    png(root / "b" / "wide.png", 40, 60, 40)
    (root / "b" / "x.jpg").write_text("not an image\n")
    return root

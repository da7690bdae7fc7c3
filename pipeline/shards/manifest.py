"""manifest.json: what a shard directory holds, and the hashes that prove it is intact."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from pipeline import storage
from pipeline.errors import GantryError
from pipeline.shards.imaging import decode_pair, decode_sample

MANIFEST = "manifest.json"
# 2 added the held-out split, 3 paired samples (task, channels_a, channels_b); an older
# manifest is read as having none of what came after it: no held-out split, unpaired images.
FORMAT = 3
READABLE = (1, 2, 3)
TASKS = ("images", "pairs")


@dataclass(frozen=True)
class ShardEntry:
    url: str            # file name relative to the manifest's directory
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    name: str                     # shard file prefix
    version: int                  # data version: 1 at build, +1 per `add`
    resolution: int
    channels: int                 # 1 (L) or 3 (RGB); for pairs B's, the image a generator draws
    transform: str                # "pad" or "resize:<filter>"
    shard_size: int
    classes: dict[int, str]       # label -> class name
    sources: list[dict]           # one record per build/add: source, samples, version, shards
    shards: list[ShardEntry]      # what training reads
    # Samples training never reads, kept apart for tests on real data (CAS): MNIST's own test
    # set, or a fraction chosen by key (`shards build --heldout`); `heldout_rule` says which.
    heldout: list[ShardEntry] = field(default_factory=list)
    heldout_rule: str = ""
    # "images": a sample is `<key>.png` and `<key>.cls`. "pairs": `<key>.a.png` and `<key>.b.png`
    # (imaging.PAIR), with `<key>.cls` only when `classes` is not empty; channels_a and channels_b
    # are the channels of each (None for images).
    task: str = "images"
    channels_a: int | None = None
    channels_b: int | None = None
    root: str = field(default=".", compare=False)   # location (path or URL) the urls are relative to

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def heldout_samples(self) -> int:
        return sum(s.samples for s in self.heldout)

    @property
    def class_names(self) -> list[str]:
        """By label: label k is class_names[k] (a label no sample uses is named by its number)."""
        return [self.classes.get(k, str(k)) for k in range(max(self.classes, default=-1) + 1)]

    @property
    def shape(self) -> str:
        """A sample's pixels in words: `32x32x3`, or `pairs 32x32x1 -> 32x32x3` (A -> B)."""
        side = f"{self.resolution}x{self.resolution}"
        if self.task == "pairs":
            return f"pairs {side}x{self.channels_a} -> {side}x{self.channels_b}"
        return f"{side}x{self.channels}"

    def decode(self, files: dict):
        """A grouped shard sample ({ext: bytes}) -> (image, what it is conditioned on): its label,
        or for pairs (B, A). ValueError says why it is unusable."""
        image, a, label = self.decode_labelled(files)
        return (image, a) if self.task == "pairs" else (image, label)

    def decode_labelled(self, files: dict):
        """-> (image, input A or None, label or None): B, A and the label of a pair; an image and
        its label otherwise."""
        if self.task == "pairs":
            a, b, label = decode_pair(files, self.resolution, self.channels_a, self.channels_b, self.classes)
            return b, a, label
        image, label = decode_sample(files, self.resolution, self.channels, self.classes)
        return image, None, label

    def path(self, entry: ShardEntry) -> str:
        return storage.join(self.root, entry.url)

    def entry(self, url: str) -> ShardEntry:
        """The entry for a shard given by file name or by any path ending in it."""
        name = storage.basename(url)
        for e in self.shards:
            if e.url == name:
                return e
        raise GantryError(f"shard {url} is not listed in {storage.join(self.root, MANIFEST)}")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("root")
        d["classes"] = {str(k): v for k, v in sorted(self.classes.items())}
        d["samples"] = self.samples
        return json.dumps({"format": FORMAT, **d}, indent=1) + "\n"

    def save(self) -> None:
        """Replace manifest.json whole: a reader sees the old or the new one, never half."""
        storage.write_bytes(storage.join(self.root, MANIFEST), self.to_json().encode())


def load_manifest(location: str) -> Manifest:
    """Read a manifest from its file or its directory (a path or a URL); any flaw is one
    GantryError."""
    location = str(location).rstrip("/")
    url = location if location.endswith(".json") else storage.join(location, MANIFEST)
    if not storage.exists(url):
        raise GantryError(f"{url}: no shard manifest (build one with `gantry shards build`)")
    try:
        d = json.loads(storage.read_bytes(url))
        if d.pop("format") not in READABLE:
            raise ValueError("unknown manifest format")
        d.pop("samples", None)
        d["shards"] = [ShardEntry(**s) for s in d["shards"]]
        d["heldout"] = [ShardEntry(**s) for s in d.get("heldout", [])]
        d["classes"] = {int(k): v for k, v in d["classes"].items()}
        if d.get("task", "images") not in TASKS:
            raise ValueError(f"unknown task {d['task']!r}")
        return Manifest(**d, root=storage.parent(url))
    except (ValueError, KeyError, TypeError) as e:
        raise GantryError(f"{url}: not a valid shard manifest ({e})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_shard_bytes(entry: ShardEntry, data: bytes) -> str | None:
    """Why these bytes are not the shard the manifest describes, or None when they are."""
    if len(data) != entry.bytes:
        return f"is {len(data)} bytes, manifest says {entry.bytes} (truncated or rewritten)"
    if sha256_bytes(data) != entry.sha256:
        return "sha256 does not match the manifest (file changed on disk)"
    return None

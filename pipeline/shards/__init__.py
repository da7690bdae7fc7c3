"""WebDataset shards with a manifest: build, append, verify, and plan who reads what.

A shard directory holds `<name>-000000.tar …` and `manifest.json`. Each sample in a tar is three
files sharing a key: `<key>.png` (the image at the directory's resolution), `<key>.cls` (the
integer label as ASCII) and `<key>.json` (class name, global index, source). Paired shards
(`build --pairs`, for image-to-image translation) hold `<key>.a.png` and `<key>.b.png` instead
of the one image, and `<key>.cls` only where the pairs are labelled. The manifest lists every
shard with its sample count, size and sha256, plus resolution, channels, the task (images or
pairs), the label set and a data version that `add` bumps (scheduled retraining keys on it).
"""
from pipeline.shards.build import add_shards, build_shards
from pipeline.shards.manifest import Manifest, ShardEntry, load_manifest
from pipeline.shards.plan import plan_shards
from pipeline.shards.verify import verify_shards

__all__ = ["Manifest", "ShardEntry", "load_manifest", "build_shards", "add_shards",
           "verify_shards", "plan_shards"]

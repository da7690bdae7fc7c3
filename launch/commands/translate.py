"""`gantry translate SOURCE IN OUT`: run a translation model (pix2pix) on input images A.

SOURCE is a checkpoint directory, a run's checkpoints folder, or `models:/NAME@ALIAS`. IN is
one image, a folder of images (searched recursively), or a paired shard directory (its
held-out inputs A, or all of them where it holds none out). OUT is a folder that gets one PNG
per input, under the input's relative path (shards: `<index>.png`); for a single image an
OUT ending in `.png` is the file itself. Inputs are fitted to the model's resolution as
`gantry shards build` fits them (resized, or zero-padded with --pad) and converted to the
channels the model reads.
"""
from __future__ import annotations

from pathlib import Path

BATCH = 250


def register(sub) -> None:
    p = sub.add_parser("translate", help="translate images with a pix2pix checkpoint or registered model")
    p.add_argument("source", help="checkpoint directory, run's checkpoints folder, or models:/NAME@ALIAS")
    p.add_argument("input", metavar="IN", help="an image, a folder of images, or a paired shard directory")
    p.add_argument("out", metavar="OUT", help="output folder (or FILE.png for a single image)")
    p.add_argument("--pad", action="store_true", help="zero-pad smaller images to the resolution instead of resizing")
    p.add_argument("--filter", choices=["box", "bilinear", "lanczos"], default="box", help="resize filter (default box)")
    p.add_argument("--uri", help="tracking URI for models:/ (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def _inputs(spec: str) -> tuple[str, list[Path]]:
    """-> ("image" | "folder" | "shards", image files); a ConfigError for what cannot be read."""
    from pipeline.config import ConfigError
    from pipeline.shards.manifest import MANIFEST
    from pipeline.shards.sources import IMAGE_EXTS

    p = Path(spec)
    if p.is_file():
        if p.suffix.lower() not in IMAGE_EXTS:
            raise ConfigError(f"IN {spec}: not an image file ({', '.join(sorted(IMAGE_EXTS))})")
        return "image", [p]
    if not p.is_dir():
        raise ConfigError(f"IN {spec}: no such file or folder")
    if (p / MANIFEST).is_file():
        return "shards", []
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ConfigError(f"IN {spec}: the folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    return "folder", files


def run(args) -> int:
    import numpy as np
    import torch

    from launch.registry import load_generator_from
    from pipeline.config import ConfigError
    from pipeline.evaluation import translate
    from pipeline.shards.imaging import fit, transform_name
    from pipeline.shards.sources import load_item
    from pipeline.visuals import png_bytes, to_uint8

    kind, files = _inputs(args.input)
    single_file = kind == "image" and args.out.lower().endswith(".png")
    G, cfg = load_generator_from(args.source, args.uri)
    if not cfg.is_translation:
        raise ConfigError(f"{args.source} is not a translation model (model.arch '{cfg.model.arch}' draws images "
                          f"from noise); use gantry sample")
    m = cfg.model
    if kind == "shards":
        batches, names = _shard_inputs(args.input, m)
    else:
        transform = transform_name(args.pad, args.filter)
        root = Path(args.input) if kind == "folder" else files[0].parent
        names = [f.relative_to(root).with_suffix(".png") for f in files]

        def load(f: Path) -> torch.Tensor:
            img = fit(load_item(f, m.input_channels), m.resolution, transform)
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1

        batches = (torch.stack([load(f) for f in files[i:i + BATCH]]) for i in range(0, len(files), BATCH))
    written = 0
    for a in batches:
        for image in to_uint8(translate(G, a)):
            target = Path(args.out) if single_file else Path(args.out) / names[written]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png_bytes(image))
            written += 1
    print(f"translated {written} image{'s' if written != 1 else ''} into {args.out}")
    return 0


def _shard_inputs(spec: str, m):
    """The inputs A of a paired shard set, checked against the model: (batches, names)."""
    from pipeline.config import ConfigError
    from pipeline.metrics.image_eval import read_pairs
    from pipeline.shards.manifest import load_manifest

    shards = load_manifest(spec)
    if shards.task != "pairs":
        raise ConfigError(f"IN {spec}: the shards hold {shards.task}, not pairs; give a folder of images instead")
    if (shards.channels_a, shards.resolution) != (m.input_channels, m.resolution):
        raise ConfigError(f"IN {spec}: inputs are {shards.resolution}x{shards.resolution}x{shards.channels_a}, the "
                          f"model reads {m.resolution}x{m.resolution}x{m.input_channels}")
    a, _, _ = read_pairs(shards, heldout=bool(shards.heldout))
    return a.split(BATCH), [f"{i:06d}.png" for i in range(len(a))]

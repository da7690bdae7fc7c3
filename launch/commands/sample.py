"""`gantry sample SOURCE --out OUT [--n N | --class K | --per-class N]`: draw from a G_ema.

SOURCE is a checkpoint directory, a run's checkpoints folder, or a registered model URI such
as `models:/NAME@champion`. OUT says what to write:
- `X.png`: one grid (a conditional model's: one row per class);
- `X.npz`: `images` (N, H, W, C) uint8 or `points` (N, 2) float32, and `labels` (N,) int64
  for a conditional model, for any other tool to read;
- `DIR/` (a trailing slash, or an existing folder): one PNG per image, under one sub-folder
  per class name for a conditional model, the layout `gantry shards build DIR` reads back
  as labelled data;
- `X.npy`: the points of a 2-D model.
"""
from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a checkpoint's G_ema or a registered model")
    p.add_argument("checkpoint", help="checkpoint directory, run's checkpoints folder, or models:/NAME@ALIAS")
    p.add_argument("--n", type=int, default=64, help="how many (a conditional model: its classes in turn)")
    p.add_argument("--class", dest="label", type=int, help="only this class (conditional models)")
    p.add_argument("--per-class", type=int, help="this many of every class (conditional models)")
    p.add_argument("--out", required=True, help="FILE.png grid, FILE.npz arrays with labels, DIR/ one PNG per "
                                                "image; FILE.npy for 2-D points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uri", help="tracking URI for models:/ (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def _kind(out: str) -> str:
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return "dir"
    kind = os.path.splitext(out)[1]
    if kind not in (".png", ".npz", ".npy"):
        from pipeline.config import ConfigError
        raise ConfigError(f"--out {out}: use FILE.png, FILE.npz, DIR/ (images) or FILE.npy (2-D points)")
    return kind


def run(args) -> int:
    import torch

    from launch.registry import load_generator_from, source_meta
    from pipeline.config import ConfigError
    from pipeline.evaluation import class_rows, generate

    kind = _kind(args.out)
    if args.label is not None and args.per_class is not None:
        raise ConfigError("--class and --per-class: give one of them")
    if args.n <= 0 or (args.per_class is not None and args.per_class <= 0):
        raise ConfigError(f"--{'n' if args.n <= 0 else 'per-class'} must be positive")
    G, cfg = load_generator_from(args.checkpoint, args.uri)
    if cfg.is_translation:
        raise ConfigError(f"{args.checkpoint} is a translation model: it draws from input images, not noise; "
                          f"use gantry translate")
    allowed = (".npy", ".npz") if cfg.is_toy else (".png", ".npz", "dir")
    if kind not in allowed:
        raise ConfigError(f"--out {args.out}: this model makes "
                          + ("2-D points: use FILE.npy or FILE.npz" if cfg.is_toy else "images: use FILE.png, FILE.npz or DIR/"))
    classes = cfg.model.classes if cfg.model.conditional else 0
    if not classes and (args.label is not None or args.per_class is not None):
        raise ConfigError(f"{args.checkpoint} is not class-conditional: --class and --per-class need a model "
                          f"trained with model.conditional: true")
    names = source_meta(args.checkpoint, args.uri, classes)["class_names"] if classes else []
    if args.label is not None and not 0 <= args.label < classes:
        raise ConfigError(f"--class {args.label}: {args.checkpoint} draws classes 0..{classes - 1} "
                          f"({', '.join(names[:12])}{', ...' if classes > 12 else ''})")

    if args.per_class is not None:
        labels = class_rows(classes, args.per_class)
    elif args.label is not None:
        labels = torch.full((args.n,), args.label)
    else:
        labels = torch.arange(args.n) % classes if classes else None
    n = args.n if labels is None else len(labels)
    samples = generate(G, n, cfg.model.z_dim, args.seed, labels=labels)
    _write(args.out, kind, samples, labels, names, per_row=args.per_class)
    print(f"wrote {n} samples to {args.out}")
    return 0


def _write(out: str, kind: str, samples, labels, names: list[str], per_row: int | None) -> None:
    import numpy as np

    from pipeline.visuals import image_grid, png_bytes, save_png, to_uint8

    os.makedirs(out if kind == "dir" else os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if kind == ".npy":
        np.save(out, samples.numpy())
        return
    if kind == ".png":
        save_png(image_grid(samples, cols=per_row), out)
        return
    if kind == ".npz":
        arrays = {"points": samples.numpy()} if samples.dim() == 2 else {"images": to_uint8(samples)}
        if labels is not None:
            arrays["labels"] = labels.numpy().astype(np.int64)
        np.savez(out, **arrays)
        return
    for i, image in enumerate(to_uint8(samples)):
        folder = os.path.join(out, names[int(labels[i])]) if labels is not None else out
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:06d}.png"), "wb") as f:
            f.write(png_bytes(image))


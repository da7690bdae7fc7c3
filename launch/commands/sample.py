"""`gantry sample SOURCE --n N --out FILE`: .npy of points for 2-D data, a PNG grid for images.

SOURCE is a checkpoint directory, a run's checkpoints folder, or a registered model URI such
as `models:/NAME@champion`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a checkpoint's G_ema or a registered model")
    p.add_argument("checkpoint", help="checkpoint directory, run's checkpoints folder, or models:/NAME@ALIAS")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True, help=".npy for 2-D data, .png for images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uri", help="tracking URI for models:/ (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from launch.registry import load_generator_from
    from pipeline.errors import GantryError
    from pipeline.evaluation import generate
    from pipeline.visuals import image_grid, save_png

    if args.n <= 0:
        raise GantryError(f"--n must be positive, got {args.n}")
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise GantryError(f"--out {out}: use a .npy (2-D points) or .png (images) file")
    G, cfg = load_generator_from(args.checkpoint, args.uri)
    samples = generate(G, args.n, cfg.model.z_dim, args.seed)
    points = samples.dim() == 2
    want = ".npy" if points else ".png"
    if out.suffix != want:
        raise GantryError(f"--out {out}: this model makes {'2-D points' if points else 'images'}; use a {want} file")
    out.parent.mkdir(parents=True, exist_ok=True)
    if points:
        np.save(out, samples.numpy())
    else:
        save_png(image_grid(samples), out)
    print(f"wrote {args.n} samples to {out}")
    return 0

"""`gantry sample CKPT --n N --out FILE`: .npy of points for 2-D data, a PNG grid for images."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a checkpoint's G_ema")
    p.add_argument("checkpoint", help="checkpoint directory or run's checkpoints folder")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True, help=".npy for 2-D data, .png for images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from pipeline.checkpoint import load_generator
    from pipeline.errors import GantryError
    from pipeline.evaluation import generate
    from pipeline.visuals import image_grid, save_png

    if args.n <= 0:
        raise GantryError(f"--n must be positive, got {args.n}")
    G, cfg = load_generator(args.checkpoint)
    out = Path(args.out)
    want = ".npy" if cfg.is_toy else ".png"
    if out.suffix != want:
        raise GantryError(f"--out {out}: this model makes {'2-D points' if cfg.is_toy else 'images'}; use a {want} file")
    samples = generate(G, args.n, cfg.model.z_dim, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.is_toy:
        np.save(out, samples.numpy())
    else:
        save_png(image_grid(samples), out)
    print(f"wrote {args.n} samples to {out}")
    return 0

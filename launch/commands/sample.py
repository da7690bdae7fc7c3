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


def _load(source: str, uri: str | None):
    """-> (G, z_dim). Registered models are torch.export programs (MLflow's pt2 format, no
    pickle), already in inference form; their latent size is in the model's metadata."""
    if source.startswith("models:/"):
        import mlflow

        from pipeline.errors import GantryError
        from pipeline.tracking import store
        mlflow.set_tracking_uri(store.resolve_uri(uri))
        try:
            z_dim = int(mlflow.models.get_model_info(source).metadata["z_dim"])
            return mlflow.pytorch.load_model(source, map_location="cpu"), z_dim
        except Exception as e:  # MLflow raises several types for a missing model or alias
            raise GantryError(f"cannot load {source}: {str(e).splitlines()[0]}") from None
    from pipeline.checkpoint import load_generator
    G, cfg = load_generator(source)
    return G, cfg.model.z_dim


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from pipeline.errors import GantryError
    from pipeline.evaluation import generate
    from pipeline.visuals import image_grid, save_png

    if args.n <= 0:
        raise GantryError(f"--n must be positive, got {args.n}")
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise GantryError(f"--out {out}: use a .npy (2-D points) or .png (images) file")
    G, z_dim = _load(args.checkpoint, args.uri)
    samples = generate(G, args.n, z_dim, args.seed)
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

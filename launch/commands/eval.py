"""`gantry eval SOURCE [key=value ...]`: score a checkpoint's G_ema or a registered model.

2-D toy data: modes covered and high-quality samples. Images: the metrics of the run's `eval`
section (FID, KID, precision/recall, class coverage) against its shard set. Translation models
(pix2pix): L1, PSNR, SSIM, FID and class match of G(A) against B on the held-out pairs
(`--n` of them). Dotted overrides
change the stored config for this evaluation only, e.g. `eval.features=inception`,
`eval.metrics=[fid,kid,pr]` or `data.path=other/shards`.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or a registered model")
    p.add_argument("checkpoint", help="checkpoint directory, run's checkpoints folder, or models:/NAME@ALIAS")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the stored config (eval.*, data.path)")
    p.add_argument("--n", type=int, help="samples to generate (default: 10000 for 2-D data, eval.n_fake for images)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--uri", help="tracking URI for models:/ (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch

    from launch.registry import load_generator_from
    from pipeline.config import with_overrides
    from pipeline.errors import GantryError
    from pipeline.evaluation import generate

    G, cfg = load_generator_from(args.checkpoint, args.uri)
    cfg = with_overrides(cfg, args.overrides, f"{args.checkpoint} (stored config)")
    n = args.n if args.n is not None else (10_000 if cfg.is_toy else cfg.eval.n_fake)
    if n <= 0:
        raise GantryError(f"--n must be positive, got {n}")
    if cfg.is_translation:
        from pipeline.evaluation import TranslationEvaluator
        from pipeline.shards.manifest import load_manifest
        cfg = with_overrides(cfg, [f"eval.n_fake={n}"], args.checkpoint)
        scores = TranslationEvaluator.from_config(cfg, load_manifest(cfg.data.path), "", "cpu").score(G)
        print(json.dumps(scores) if args.json else ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + f" (n={n})")
        return 0
    if cfg.is_toy:
        from pipeline.metrics.mixture import mixture_scores
        from pipeline.mixtures import mixture_centers
        d = cfg.data
        # a conditional toy's modes in turn (a registered model takes its labels explicitly)
        labels = torch.arange(n) % cfg.model.classes if cfg.model.conditional else None
        samples = generate(G, n, cfg.model.z_dim, args.seed, batch=250, labels=labels)
        scores = mixture_scores(samples, mixture_centers(d.source, d.modes, d.radius), d.std)
        text = f"modes covered {scores['modes_covered']:.0f}/{scores['modes_total']:.0f}, " \
               f"high-quality samples {scores['hq_pct']:.1f}%"
    else:
        from pipeline.evaluation import labels_in_shares
        from pipeline.metrics.image_eval import ImageMetrics
        if not cfg.eval.metrics:
            raise GantryError("eval.metrics is empty: name some of fid, kid, pr, coverage")
        metrics = ImageMetrics.from_config(cfg)
        # a conditional model draws the real set's class mix, as in training's evaluations
        labels = labels_in_shares(n, metrics.class_shares()) if cfg.model.conditional else None
        samples = generate(G, n, cfg.model.z_dim, args.seed, batch=250, labels=labels)
        scores = metrics.score(samples, labels)
        text = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    print(json.dumps(scores) if args.json else f"{text} (n={n})")
    return 0

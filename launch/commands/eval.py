"""`gantry eval CKPT`: score a checkpoint's G_ema (mode coverage and quality for toy data)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory, or a run's checkpoints folder")
    p.add_argument("--n", type=int, default=10_000, help="samples to generate")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from pipeline.checkpoint import load_generator
    from pipeline.errors import GantryError
    from pipeline.evaluation import generate
    from pipeline.metrics.mixture import mixture_scores
    from pipeline.mixtures import mixture_centers

    G, cfg = load_generator(args.checkpoint)
    if not cfg.is_toy:
        raise GantryError(f"{args.checkpoint}: image metrics are not available in this build")
    d = cfg.data
    points = generate(G, args.n, cfg.model.z_dim, args.seed)
    scores = mixture_scores(points, mixture_centers(d.source, d.modes, d.radius), d.std)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"modes covered {scores['modes_covered']:.0f}/{scores['modes_total']:.0f}, "
              f"high-quality samples {scores['hq_pct']:.1f}% (n={args.n})")
    return 0

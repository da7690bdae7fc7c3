"""`gantry retrain CONFIG [key=value ...] [--force]`: one scheduled champion/challenger round.

See launch/retrain.py for what a round does. Meant for a scheduler (k8s CronJob, KubeRay
RayCronJob), so it is idempotent: with nothing new it prints "nothing to do" and exits 0.
While another retrain of the same config holds the lock (`retrain.lock_path`), it prints that
and exits 0 too: the work is being done, and a scheduler must neither retry nor alert.
`--force` trains a challenger even when the champion already saw this data version.
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("retrain", help="train a challenger on new data; promote it if it beats the champion")
    p.add_argument("config", help="YAML run config (with tracking enabled)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. retrain.kimg=100")
    p.add_argument("--force", action="store_true", help="train a challenger even if the data is not new")
    p.set_defaults(func=run)


def run(args) -> int:
    from launch import retrain
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    try:
        with retrain.exclusive(retrain.lock_path(cfg)):
            retrain.retrain(cfg, force=args.force)
    except retrain.Locked as e:
        print(f"gantry: retrain: {e}; not running a second one", file=sys.stderr)
    return 0

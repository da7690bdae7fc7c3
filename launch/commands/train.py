"""`gantry train CONFIG [key=value ...] [--resume latest|PATH] [--workers N] [--strategy S]
[--launcher auto|local|ray|env] [--address ADDR] [--verbose]`.

Launcher (launch/launcher.py): `env` when torchrun or `accelerate launch` started this process
(WORLD_SIZE is set; every rank runs this command), else `ray` when workers > 1, else `local`.
The console shows gantry's own lines only (see launch/console.py); everything else the run's
processes print goes to `<run dir>/logs/train-<time>.log`. `--verbose` prints it all instead.
"""
from __future__ import annotations


def register(sub) -> None:
    from launch.launcher import LAUNCHERS

    p = sub.add_parser("train", help="train a GAN from a YAML config")
    p.add_argument("config", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch=32")
    p.add_argument("--resume", metavar="latest|PATH", help="continue from a checkpoint")
    p.add_argument("--workers", type=int, help="number of training workers (overrides `workers`)")
    p.add_argument("--strategy", choices=["single", "ddp", "deepspeed"], help="overrides strategy.kind")
    p.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                   help="auto (default): env under torchrun / accelerate launch, else ray when workers > 1, "
                        "else local")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--placement", choices=["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"], default="PACK",
                   help="Ray: how workers are placed on nodes (default PACK; STRICT_SPREAD: one per node)")
    p.add_argument("--max-failures", type=int, default=3, metavar="N",
                   help="Ray: restart the worker group from its last checkpoint up to N times")
    p.add_argument("--verbose", action="store_true",
                   help="print everything Ray, MLflow and DeepSpeed print, not only gantry's lines")
    p.set_defaults(func=run)


def config_from_args(args):
    from pipeline.config import load_config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.strategy is not None:
        overrides.append(f"strategy.kind={args.strategy}")
    return load_config(args.config, overrides)


def run(args) -> int:
    from launch.console import Console, summary
    from launch.env_launch import group_config
    from launch.launcher import choose_launcher, launch
    from pipeline.errors import GantryError

    cfg = config_from_args(args)
    launcher = choose_launcher(args.launcher, cfg)
    # A bad launch fails here, on every rank, before a log is written; launch() joins the group.
    rank = group_config(cfg)[1].rank if launcher == "env" else 0
    console = Console.for_run(cfg, "train", verbose=args.verbose, rank=rank)
    try:
        with console:
            launch(cfg, resume=args.resume, launcher=launcher, address=args.address,
                   max_failures=args.max_failures, placement=args.placement)
    except GantryError as e:  # a failure while working: its one line says where the rest is
        if not console.location:
            raise
        raise GantryError(f"{e} (full log: {console.location})") from None
    if rank == 0:
        print(summary(cfg, console), flush=True)
    return 0

"""`gantry sweep CONFIG SWEEP.yaml [key=value ...] [--address ADDR] [--resume] [--verbose]`:
hyperparameter search on Ray Tune, each trial an ordinary gantry run (launch/sweeps/).

SWEEP.yaml (launch/sweeps/spec.py) names the searched config keys, the metric, the budget and
the scheduler (grid, random, asha, pbt). Every mistake in it is found before Ray starts and
exits 2 with one line naming the file and the key. The console shows one line per trial that
ends, a progress line, and the result; everything else goes to `<sweep dir>/logs/`.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters on Ray Tune (grid, random, ASHA, PBT)")
    p.add_argument("config", help="YAML run config every trial starts from")
    p.add_argument("sweep", help="YAML sweep: space, metric, budget, scheduler")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the run config, e.g. seed=3")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of the same name")
    p.add_argument("--verbose", action="store_true", help="print everything Ray Tune and the trials print")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import tempfile
    import time

    from launch.console import Console
    from launch.sweeps.driver import run_sweep, sweep_dir
    from launch.sweeps.spec import load_sweep
    from pipeline import storage
    from pipeline.config import load_config
    from pipeline.console import PREFIX, duration

    cfg = load_config(args.config, args.overrides)
    spec, base = load_sweep(args.sweep, cfg)
    root = sweep_dir(cfg, spec)
    storage.ensure_dir(root)
    name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    local = os.path.join(tempfile.gettempdir(), "gantry-logs", f"{spec.name}-{name}-{os.getpid()}.log")
    console = Console(local, storage.join(root, "logs", f"{name}.log"), verbose=args.verbose)
    with console:
        run_sweep(cfg, spec, base, {"config": os.path.abspath(args.config), "sweep": os.path.abspath(args.sweep)},
                  address=args.address, resume=args.resume)
    print(f"{PREFIX}sweep {spec.name} done in {duration(console.elapsed)}; log {console.location}", flush=True)
    return 0

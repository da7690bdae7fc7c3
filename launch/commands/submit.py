"""`gantry submit CONFIG [key=value ...] --address http://HOST:8265 [--workers N] [--follow]`.

Validates the config here (a bad one exits 2 before anything is sent), submits `gantry train`
as a Ray job (see launch/submit.py for what travels with it) and prints the job id. With
`--follow` it streams the job's logs (the console of its `gantry train`: gantry's lines only,
everything with `--verbose`) and exits 0 if the job SUCCEEDED, 1 otherwise.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit training as a job to a Ray cluster")
    p.add_argument("config", help="YAML run config, inside the working directory")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.kimg=500")
    p.add_argument("--address", help="Ray Jobs API, http://HOST:8265 (default: RAY_ADDRESS)")
    p.add_argument("--workers", type=int, help="number of training workers (overrides `workers`)")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working dir (default: .)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="also pass this environment variable (MLFLOW_* and AWS_* always pass)")
    p.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's outcome")
    p.add_argument("--verbose", action="store_true",
                   help="the job prints everything Ray, MLflow and DeepSpeed print, not only gantry's lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from launch import submit
    from pipeline.config import load_config

    overrides = list(args.overrides) + ([f"workers={args.workers}"] if args.workers else [])
    load_config(args.config, overrides)  # ConfigError -> exit 2, before touching the cluster
    env = submit.passed_env(args.env)
    client = submit.connect(args.address)
    job_id = submit.submit(client, args.config, args.overrides, args.workers, Path(args.working_dir), env, args.verbose)
    print(f"submitted job {job_id}" + (f" (passing {', '.join(sorted(env))})" if env else ""), flush=True)
    if not args.follow:
        return 0
    status = submit.follow(client, job_id, args.verbose)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1

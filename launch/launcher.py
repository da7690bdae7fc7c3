"""One entry for every training launch: `launch(cfg, ...)` picks the launcher and trains.

- `local`: this process, one worker with strategy `single`, no Ray; the fastest path on one
  device and the debugging path. The default when `workers == 1`.
- `ray`: `workers` Ray Train workers (launch/ray_train.py). The default when `workers > 1`.
- `env`: this process is one rank of a group torchrun or `accelerate launch` started
  (launch/env_launch.py). The default whenever WORLD_SIZE is set.
"""
from __future__ import annotations

import os

from pipeline.config import ConfigError, RunConfig
from pipeline.errors import GantryError

LAUNCHERS = ("auto", "local", "ray", "env")


def choose_launcher(launcher: str | None, cfg: RunConfig, environ=os.environ) -> str:
    """`auto` (or None) resolved; a ConfigError for a launcher the environment contradicts."""
    from launch.env_launch import in_group

    if launcher in (None, "auto"):
        return "env" if in_group(environ) else "ray" if cfg.workers > 1 else "local"
    if launcher == "env" and not in_group(environ):
        raise ConfigError("--launcher env: WORLD_SIZE is not set; start gantry under torchrun or accelerate launch")
    if launcher != "env" and environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError(f"--launcher {launcher} inside a group of WORLD_SIZE={environ['WORLD_SIZE']} processes "
                          f"would train one whole run per process; drop --launcher (or use --launcher env)")
    return launcher


def launch(cfg: RunConfig, resume: str | None = None, launcher: str | None = None, address: str | None = None,
           max_failures: int = 3, tracking_run_id: str | None = None, placement: str = "PACK") -> dict[str, float]:
    """Train `cfg`; returns the last evaluation. `resume`: 'latest' or a checkpoint path;
    `address`: a Ray cluster (default RAY_ADDRESS, else an embedded Ray); `tracking_run_id`:
    an existing MLflow run to log into (see pipeline.worker.train_worker); `placement`: Ray's
    placement strategy for the workers (PACK, SPREAD, STRICT_SPREAD, STRICT_PACK)."""
    launcher = choose_launcher(launcher, cfg)
    if launcher == "env":
        from launch.env_launch import group_config, run_env
        cfg, group = group_config(cfg)
        check_locations(cfg)
        return run_env(cfg, group, resume=resume, tracking_run_id=tracking_run_id)
    check_locations(cfg)
    if launcher == "ray":
        from launch.ray_train import run_ray
        return run_ray(cfg, resume=resume, address=address, max_failures=max_failures,
                       tracking_run_id=tracking_run_id, placement=placement)
    if cfg.workers != 1 or cfg.strategy.kind != "single":
        raise GantryError(f"the local launcher runs one worker with strategy 'single' "
                          f"(got workers={cfg.workers}, strategy={cfg.strategy.kind}); use --launcher ray")
    from pipeline.worker import train_worker
    return train_worker(cfg, resume=resume, tracking_run_id=tracking_run_id)


def check_locations(cfg: RunConfig) -> None:
    """Fail before any work starts, with one line naming the URL, when the run cannot write
    where it should (missing bucket, refused credentials, unreachable endpoint), its data
    is not there, its model family does not fit its data, or a conditional run's data has a
    single class."""
    from pipeline import storage
    from pipeline.shards.manifest import load_manifest
    from pipeline.worker import run_dir_for, with_classes, with_task

    storage.ensure_dir(run_dir_for(cfg))
    if not cfg.is_toy:
        m = load_manifest(cfg.data.path)
        with_task(with_classes(cfg, m.class_names, cfg.data.path), m.task, m.channels_a, cfg.data.path)

"""The Ray launcher: N training workers under Ray Train's `TorchTrainer`.

The driver (this process)
  - joins a Ray cluster (`address`, else RAY_ADDRESS) or starts an embedded one sized to this
    machine;
  - plans each rank's shard list with `plan_shards` and hands rank k its list: Ray owns the
    sharding, workers only stream what they are given;
  - runs `TorchTrainer` with a process group (gloo on CPU, NCCL on GPU), `FailureConfig`
    (a dead worker restarts the whole group, up to `max_failures` times) and `CheckpointConfig`.

Each worker calls `pipeline.worker.train_worker`. After every save, every rank calls
`ray.train.report`, rank 0 with the checkpoint directory it just wrote; Ray copies it into
`<run dir>/ray/<launch name>/`. A restarted group resumes from `ray.train.get_checkpoint()`:
weights, optimizer state, step, RNG and every rank's data position. A worker killed after
rank 0 wrote a checkpoint but before Ray took the report leaves that checkpoint in the run
dir only; a restart finds it there (it is newer than the launch), so no progress is lost.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import GantryError

MAX_FAILURES = 3


def plan_worker_shards(cfg: RunConfig) -> list[list[str] | None]:
    """Rank k's shard paths (epoch 0 of the seeded plan); None per rank for toy data."""
    if cfg.is_toy:
        return [None] * cfg.workers
    from pipeline.shards.manifest import load_manifest
    from pipeline.shards.plan import plan_shards

    return plan_shards(load_manifest(cfg.data.path), 0, cfg.seed, cfg.workers)


def _worker_loop(config: dict) -> None:
    """Runs in each Ray Train worker."""
    import ray.train
    import torch

    from pipeline.config import from_dict
    from pipeline.worker import train_worker

    if Path(config["cwd"]).is_dir():  # relative paths in the config mean what the user typed
        os.chdir(config["cwd"])
    # Oversubscribed OpenMP threads make torch ~20x slower: share the node's cores.
    torch.set_num_threads(config["threads"])
    cfg = from_dict(config["cfg"], "<ray driver>")
    rank = ray.train.get_context().get_world_rank()

    def report(path: Path | None, info: dict) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(path)) if path else None
        ray.train.report(info, checkpoint=ckpt, checkpoint_dir_name=path.name if path else None,
                         delete_local_checkpoint_after_upload=False)

    run = dict(shard_urls=config["shards"][rank], on_checkpoint=report, tracking_run_id=config["tracking_run_id"])
    restored = ray.train.get_checkpoint()
    if restored is None:
        resume = _saved_since(cfg, config["launched"]) or config["resume"]
        if resume != config["resume"] and rank == 0:
            print(f"gantry: worker group restarted; resuming from {resume}", flush=True)
        train_worker(cfg, resume=resume, **run)
        return
    with restored.as_directory() as path:
        if rank == 0:
            print(f"gantry: worker group restarted; resuming from {path}", flush=True)
        train_worker(cfg, resume=path, **run)


def _saved_since(cfg: RunConfig, launched: float) -> str | None:
    """The run dir's newest checkpoint if this launch wrote it (a restart before Ray took it)."""
    from pipeline import checkpoint
    from pipeline.worker import run_dir_for

    latest = checkpoint.latest_checkpoint(run_dir_for(cfg) / "checkpoints")
    if latest is not None and checkpoint.read_meta(latest).get("time", 0) >= launched:
        return str(latest)
    return None


def _quiet_placement_group_cleaner() -> None:
    """Runs in every Ray worker process of an embedded cluster. Without the dashboard there is
    no State API, so Ray Train's placement-group cleaner cannot do its job and warns about it
    every two seconds for the whole run."""
    import logging
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _connect(address: str | None, workers: int) -> bool:
    """Join or start Ray; True when this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # ray.init replaces the driver's SIGTERM handler with sys.exit(15); gantry's own (see
    # launch/cli.py) stops training the way Ctrl-C does and exits 143, so it is put back.
    sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False,
                 object_store_memory=512 * 2**20,
                 runtime_env={"worker_process_setup_hook": _quiet_placement_group_cleaner})
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    return True


def run_ray(cfg: RunConfig, resume: str | None = None, address: str | None = None,
            max_failures: int = MAX_FAILURES, tracking_run_id: str | None = None) -> dict[str, float]:
    """Train `cfg` on `cfg.workers` Ray workers; return rank 0's last report (its eval)."""
    import ray
    import ray.train
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.strategy import COLLECTIVE_TIMEOUT_S
    from pipeline.worker import run_dir_for

    shards = plan_worker_shards(cfg)  # before Ray starts: a bad data path fails fast
    started = _connect(address, cfg.workers)
    gpu = torch.cuda.is_available()
    storage = (run_dir_for(cfg) / "ray").resolve()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "resume": resume, "shards": shards,
                           "tracking_run_id": tracking_run_id,
                           "cwd": os.getcwd(), "launched": time.time(), "threads": max(1, (os.cpu_count() or 1) // cfg.workers)},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        run_config=RayRunConfig(
            # One name per launch: a later launch resumes only when asked (--resume), while
            # restarts inside this launch resume from this launch's checkpoints.
            name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise GantryError(f"training failed after {max_failures} restarts: {_root_cause(e)}") from None
    finally:
        if started:
            ray.shutdown()
    return {k: v for k, v in (result.metrics or {}).items() if k not in ("step", "kimg")}


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__

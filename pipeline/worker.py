"""Everything one training worker does, whoever launched it (local process or Ray Train):
build the strategy, data stream, tracker and trainer from the config; resume; train; close."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import checkpoint
from pipeline.config import RunConfig, to_yaml
from pipeline.evaluation import ImageEvaluator, MixtureEvaluator, no_evaluation
from pipeline.mixtures import MixtureStream
from pipeline.strategy import Strategy, make_strategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir) / cfg.name


def make_stream(cfg: RunConfig, rank: int, world_size: int, shard_urls: list[str] | None = None):
    local_batch = cfg.train.batch // world_size
    d = cfg.data
    if cfg.is_toy:
        return MixtureStream(d.source, d.modes, d.std, d.radius, local_batch, seed=cfg.seed * 7919 + rank)
    from pipeline.data import ShardStream
    return ShardStream.from_config(d, rank=rank, world_size=world_size, seed=cfg.seed,
                                   batch=local_batch, shards=shard_urls)


def make_tracker(cfg: RunConfig, rank: int, resume_run_id: str | None, run_dir: Path) -> Tracker:
    if rank != 0 or not cfg.tracking.enabled:
        return Tracker()
    from pipeline.tracking.mlflow_tracker import MLflowTracker
    return MLflowTracker(cfg.tracking, run_name=cfg.tracking.run_name or cfg.name, resume_run_id=resume_run_id,
                         spool_dir=run_dir / "mlflow-spool")


def run_tags(cfg: RunConfig, stream, strategy: Strategy, precision) -> dict[str, str]:
    """What a user filters runs by: code version, data version, how it was run."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    manifest = getattr(stream, "manifest", None)
    return {
        "git_commit": commit or "unknown",
        "data_version": str(manifest.version) if manifest else cfg.data.source,
        "data_source": cfg.data.path or cfg.data.source,
        "strategy": cfg.strategy.kind, "workers": str(strategy.world_size),
        "precision": precision.name, "channels_last": str(precision.channels_last),
    }


def make_evaluator(cfg: RunConfig, stream, run_dir: Path, device, comm=None):
    """Rank 0 evaluates and logs; with image metrics the other ranks extract their share."""
    rank = comm.rank if comm else 0
    if cfg.is_toy:
        if rank != 0:
            return no_evaluation
        return MixtureEvaluator(stream.centers, cfg.data.std, cfg.model.z_dim, seed=cfg.seed + 12345)
    metrics = None
    if cfg.eval.metrics:
        from pipeline.metrics.image_eval import ImageMetrics
        metrics = ImageMetrics.from_config(cfg, device=device)
    elif rank != 0:
        return no_evaluation
    return ImageEvaluator(cfg.model.z_dim, run_dir, metrics, cfg.eval.n_fake, cfg.eval.features,
                          seed=cfg.seed + 12345, comm=comm)


def train_worker(cfg: RunConfig, resume: str | None = None, strategy: Strategy | None = None,
                 shard_urls: list[str] | None = None, on_checkpoint=None) -> dict[str, float]:
    """Train to cfg.train.kimg and return the last evaluation. `resume`: 'latest' or a path.
    `on_checkpoint(path, info)` runs on every rank after each save (see Trainer.save)."""
    if cfg.is_toy:
        # The toy MLP's matmuls are too small to split: one thread is faster (measured ~2x on
        # two cores) and does not collapse when another process competes for the cores.
        torch.set_num_threads(1)
    strategy = strategy or make_strategy(cfg)
    run_dir = run_dir_for(cfg)
    ckpt = checkpoint.resolve_checkpoint(resume, run_dir / "checkpoints") if resume else None
    resume_run_id = checkpoint.read_meta(ckpt).get("tracking_run_id") if ckpt else None
    stream = make_stream(cfg, strategy.rank, strategy.world_size, shard_urls)
    tracker = make_tracker(cfg, strategy.rank, resume_run_id, run_dir)
    evaluator = make_evaluator(cfg, stream, run_dir, strategy.device, strategy)
    trainer = Trainer(cfg, strategy, stream, tracker, run_dir, evaluator, channels=stream.channels)
    trainer.on_checkpoint = on_checkpoint
    if ckpt:
        trainer.load(ckpt)
    else:
        tracker.log_params(_flatten(cfg.model_dump(mode="json")))
        tracker.set_tags(run_tags(cfg, stream, strategy, trainer.precision))
    if strategy.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        tracker.log_artifact(str(run_dir / "config.yaml"))
        print(f"gantry: {cfg.name}: precision {trainer.precision.name}, channels_last "
              f"{trainer.precision.channels_last}, device {strategy.device}, workers {strategy.world_size}"
              + (f", resumed from {ckpt} at kimg {trainer.kimg:.2f}" if ckpt else ""), flush=True)
    status = "FAILED"
    try:
        result = trainer.train()
        status = "FINISHED"
        return result
    finally:
        tracker.close(status)
        strategy.shutdown()


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

"""Everything one training worker does, whoever launched it (local process or Ray Train).

`train_worker` is the one place a run is built. Parts are made in the order they depend on
each other, under one ExitStack: whatever fails after the process group or the tracker
started (a corrupt resume checkpoint, a DeepSpeed world-size mismatch, a data error) still
ends the MLflow run as FAILED and shuts the strategy down without entering a collective.
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import tempfile

import torch

from models.augment import Augment
from pipeline import checkpoint, console, storage
from pipeline.allocator import keep_freed_memory
from pipeline.config import ConfigError, OptimConfig, RunConfig, to_yaml, with_overrides
from pipeline.errors import GantryError
from pipeline.evaluation import ImageEvaluator, MixtureEvaluator, TranslationEvaluator, no_evaluation
from pipeline.health import HealthMonitor, Probe, diversity
from pipeline.mixtures import MixtureStream
from pipeline.phases import build_phases
from pipeline.precision import choose_precision
from pipeline.strategy import Strategy
from pipeline.tracking import Tracker
from pipeline.trainer import Trainer


def run_dir_for(cfg: RunConfig) -> str:
    """Where the run writes (a path or a URL): checkpoints/, samples/, config.yaml."""
    return storage.join(cfg.train.out_dir, cfg.name)


def make_strategy(cfg: RunConfig) -> Strategy:
    """The configured strategy; a multi-process one joins (or creates) the process group first.
    The global batch is split by the group's actual size, which a torchrun launch sets, not
    `cfg.workers`."""
    kind = cfg.strategy.kind
    if kind == "single":
        from pipeline.strategy.single import SingleStrategy
        return SingleStrategy()
    if kind not in ("ddp", "deepspeed"):
        raise ValueError(f"strategy {kind!r} is not available in this build")
    import torch.distributed as dist

    from pipeline.strategy.ddp import init_process_group, leave_process_group

    init_process_group()
    world_size = dist.get_world_size()
    if cfg.train.batch % world_size:
        leave_process_group(failed=True)  # every rank raises this; none waits for the others
        raise GantryError(f"train.batch ({cfg.train.batch}) is not divisible by the {world_size} "
                          f"ranks of the process group")
    if kind == "ddp":
        from pipeline.strategy.ddp import DDPStrategy
        return DDPStrategy()
    from pipeline.strategy.deepspeed import DeepSpeedStrategy
    return DeepSpeedStrategy(cfg.strategy.zero_stage, micro_batch=cfg.rank_batch(world_size))


def make_stream(cfg: RunConfig, rank: int, world_size: int):
    """This rank's stream: toy points, or its share of every epoch's shard plan."""
    d = cfg.data
    if cfg.is_toy:
        return MixtureStream(d.source, d.modes, d.std, d.radius, cfg.rank_batch(world_size), seed=cfg.seed * 7919 + rank)
    from pipeline.data import ShardStream
    return ShardStream.from_config(d, rank=rank, world_size=world_size, seed=cfg.seed,
                                   batch=cfg.rank_batch(world_size))


def with_classes(cfg: RunConfig, class_names: list[str], where: str) -> RunConfig:
    """A conditional run with its class count taken from its data (`class_names` by label,
    read from `where`); unconditional runs pass unchanged."""
    m = cfg.model
    if not m.conditional:
        return cfg
    if len(class_names) < 2:
        raise ConfigError(f"model.conditional: {where} has {len(class_names)} class"
                          f"{'' if len(class_names) == 1 else 'es'} ({', '.join(class_names) or 'none'}); a "
                          f"conditional model needs labelled data with two or more (an image folder with one "
                          f"sub-folder per class)")
    if m.classes not in (0, len(class_names)):
        raise ConfigError(f"model.classes is {m.classes} but {where} has {len(class_names)} classes; "
                          f"leave model.classes out, it is read from the data")
    return with_overrides(cfg, [f"model.classes={len(class_names)}"], where)


def with_task(cfg: RunConfig, task: str, input_channels: int | None, where: str) -> RunConfig:
    """A run whose model family fits its data's task (`where`'s manifest says "images" or
    "pairs"), with a translation model's input channels taken from the data."""
    if cfg.is_translation != (task == "pairs"):
        raise ConfigError(f"model.arch '{cfg.model.arch}' " + (
            f"translates paired images, but {where} holds {task} (build pairs with `gantry shards build "
            f"SOURCE OUT --pairs`)" if cfg.is_translation else
            f"draws images from noise, but {where} holds pairs; use model.arch: pix2pix"))
    if not cfg.is_translation:
        return cfg
    return with_overrides(cfg, [f"model.input_channels={input_channels}"], where)


def build_networks(cfg: RunConfig, channels: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The only place that maps `model.arch` to a class."""
    m = cfg.model
    if m.arch == "pix2pix":
        from models.pix2pix import PatchDiscriminator, UNetGenerator
        # instance norm in G too: G_ema runs in eval mode, where batch norm would switch to
        # running statistics that G never trained with.
        return (UNetGenerator(m.input_channels, channels, m.resolution, m.g_width, dropout=m.dropout, norm="instance"),
                PatchDiscriminator(m.input_channels, channels, m.resolution, m.d_width))
    k = m.classes if m.conditional else 0
    if m.arch == "mlp":
        from models.mlp import MLPDiscriminator, MLPGenerator
        return MLPGenerator(m.z_dim, m.g_width, m.depth, classes=k), MLPDiscriminator(m.d_width, m.depth, classes=k)
    if m.arch == "dcgan":
        from models.dcgan import DCGANDiscriminator, DCGANGenerator
        return (DCGANGenerator(m.z_dim, m.resolution, channels, m.g_width, classes=k),
                DCGANDiscriminator(m.resolution, channels, m.d_width, classes=k))
    if m.arch == "resnet":
        from models.resnet import ResNetDiscriminator, ResNetGenerator
        return (ResNetGenerator(m.z_dim, m.resolution, channels, m.g_width, classes=k),
                ResNetDiscriminator(m.resolution, channels, m.d_width, classes=k, spectral_norm=m.d_spectral_norm))
    if m.arch == "stylegan2":
        from models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
        return (StyleGAN2Generator(m.z_dim, m.w_dim, m.resolution, channels, m.g_width, m.mapping_layers,
                                   classes=k),
                StyleGAN2Discriminator(m.resolution, channels, m.d_width, classes=k))
    raise ValueError(f"unknown model.arch {m.arch!r}")


def build_optimizer(params, o: OptimConfig) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a dozen ops per tensor; on small nets (the toys)
    # the per-tensor loop costs more than the math.
    return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), fused=True)


def make_networks(cfg: RunConfig, strategy: Strategy, precision, channels: int) -> torch.nn.Module:
    """G and D with their optimizers, handed to the strategy; returns G_ema, a copy of G."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    G, D = build_networks(cfg, channels)
    fmt = torch.channels_last if precision.channels_last else torch.preserve_format
    G, D = G.to(strategy.device, memory_format=fmt), D.to(strategy.device, memory_format=fmt)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    strategy.setup({"G": G, "D": D}, {"G": build_optimizer(G.parameters(), cfg.g_optim),
                                      "D": build_optimizer(D.parameters(), cfg.d_optim)}, precision)
    return G_ema


def make_tracker(cfg: RunConfig, rank: int, resume_run_id: str | None, run_dir: str) -> Tracker:
    if rank != 0 or not cfg.tracking.enabled:
        return Tracker()
    from pipeline.tracking.mlflow_tracker import MLflowTracker
    # The spool appends to files, which object stores cannot: it is written on this node's disk
    # and, for a run dir on an object store, published there at close (see tracking/spool.py).
    remote = not storage.is_local(run_dir)
    local = os.path.join(tempfile.gettempdir(), "gantry", cfg.name) if remote else storage.local_path(run_dir)
    return MLflowTracker(cfg.tracking, run_name=cfg.tracking.run_name or cfg.name, resume_run_id=resume_run_id,
                         spool_dir=os.path.join(local, "mlflow-spool"),
                         spool_to=storage.join(run_dir, "mlflow-spool") if remote else None)


def make_health(cfg: RunConfig) -> HealthMonitor | None:
    if not cfg.health.enabled:
        return None
    h = cfg.health
    if cfg.loss.kind == "wgan-gp":  # critic values are unbounded by design: no loss-level rules
        h = h.model_copy(update={"d_floor": 0.0, "max_loss": 0.0})
    if cfg.is_translation and not cfg.loss.adv_weight:  # L1 alone: no D, nothing can diverge against it
        h = h.model_copy(update={"d_floor": 0.0, "max_loss": 0.0})
    return HealthMonitor.from_config(h)


def make_evaluator(cfg: RunConfig, stream, run_dir: str, device, comm=None):
    """Rank 0 evaluates and logs; with image metrics the other ranks extract their share."""
    rank = comm.rank if comm else 0
    if cfg.is_toy:
        if rank != 0:
            return no_evaluation
        return MixtureEvaluator(stream.centers, cfg.data.std, cfg.model.z_dim, seed=cfg.seed + 12345)
    if cfg.is_translation:
        if rank != 0:
            return no_evaluation
        return TranslationEvaluator.from_config(cfg, stream.manifest, run_dir, device)
    metrics = None
    if cfg.eval.metrics:
        from pipeline.metrics.image_eval import ImageMetrics
        metrics = ImageMetrics.from_config(cfg, device=device)
    elif rank != 0:
        return no_evaluation
    return ImageEvaluator(cfg.model.z_dim, run_dir, metrics, cfg.eval.n_fake, cfg.eval.features,
                          seed=cfg.seed + 12345, comm=comm, classes=cfg.model.classes if cfg.model.conditional else 0)


def health_probe(cfg: RunConfig, stream) -> Probe:
    """G's inputs for the health monitor's diversity readings, the same at every reading and on
    every rank (fixed latents, or for translation the first held-out inputs A), and the
    diversity of as many real samples: the first ones of the shards (reading only the shards
    that hold them), or toy points from a fixed seed; a conditional G is asked for its classes
    in turn and read within classes (health.Probe). Without health checks, nothing is read."""
    if not cfg.health.enabled:
        return Probe(())
    n = cfg.health.diversity_samples
    if cfg.model.conditional:  # read within classes, which needs pairs: two latents per class at least
        n = max(n, 2 * cfg.model.classes)
    z = torch.randn(n, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 777))
    if cfg.is_toy:
        d = cfg.data
        real, _ = next(MixtureStream(d.source, d.modes, d.std, d.radius, n, seed=cfg.seed + 778))
        return Probe((z,), diversity(real))
    from pipeline.metrics.image_eval import read_pairs, read_real
    m = stream.manifest
    if cfg.is_translation:
        a, b, _ = read_pairs(m, n, heldout=bool(m.heldout), head=True)
        return Probe((a,), diversity(b))
    real, labels = read_real(m, n, head=True)
    if not cfg.model.conditional:
        return Probe((z,), diversity(real))
    c = torch.arange(n) % cfg.model.classes
    return Probe((z, c), diversity(real, labels), c)


def run_tags(cfg: RunConfig, stream, strategy: Strategy, precision) -> dict[str, str]:
    """What a user filters runs by: code version, data version, how it was run."""
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


def train_worker(cfg: RunConfig, resume: str | None = None, on_checkpoint=None,
                 tracking_run_id: str | None = None) -> dict[str, float]:
    """Train to cfg.train.kimg and return the last evaluation. `resume`: 'latest' or a path.
    `on_checkpoint(path, info)` runs on every rank after each save (see Trainer.save).
    `tracking_run_id`: log into this existing MLflow run (its params and tags are logged
    here) instead of the resumed checkpoint's run or a new one."""
    console.show_warnings()
    keep_freed_memory()
    if cfg.is_toy:
        # The toy MLP's matmuls are too small to split: one thread is faster (measured ~2x on
        # two cores) and does not collapse when another process competes for the cores.
        torch.set_num_threads(1)
    run_dir = run_dir_for(cfg)
    with contextlib.ExitStack() as stack:
        strategy = make_strategy(cfg)
        stack.push(lambda kind, exc, tb: strategy.shutdown(failed=kind is not None))
        ckpt = checkpoint.resolve_checkpoint(resume, storage.join(run_dir, "checkpoints")) if resume else None
        precision = choose_precision(cfg.train, strategy.device, image_model=not cfg.is_toy)

        stream = make_stream(cfg, strategy.rank, strategy.world_size)
        where = cfg.data.path or cfg.data.source
        cfg = with_classes(cfg, stream.class_names, where)
        if not cfg.is_toy:
            cfg = with_task(cfg, stream.manifest.task, stream.manifest.channels_a, where)
        G_ema = make_networks(cfg, strategy, precision, stream.channels)
        a = cfg.augment
        augment = Augment(a.kind, a.policy, a.ada_target, a.ada_interval, a.ada_kimg)
        phases = build_phases(cfg, augment, precision, reduce=strategy.all_reduce_mean)

        resumed_run = checkpoint.read_meta(ckpt).get("tracking_run_id") if ckpt else None
        tracker = make_tracker(cfg, strategy.rank, tracking_run_id or resumed_run, run_dir)
        stack.push(lambda kind, exc, tb: tracker.close(_status(kind)))
        evaluator = make_evaluator(cfg, stream, run_dir, strategy.device, strategy)
        torch.manual_seed(cfg.seed * 1009 + strategy.rank)  # each rank draws its own latents
        trainer = Trainer(cfg, strategy, G_ema, phases, stream, precision, augment, tracker, evaluator,
                          make_health(cfg), health_probe(cfg, stream), run_dir, stream.channels, on_checkpoint)
        if ckpt:
            trainer.load(ckpt)
        if not ckpt or tracking_run_id:
            tracker.log_params(cfg.model_dump(mode="json"))
            tracker.set_tags(run_tags(cfg, stream, strategy, precision))
        if strategy.rank == 0:
            storage.write_bytes(storage.join(run_dir, "config.yaml"), to_yaml(cfg).encode())
            tracker.log_artifact(storage.join(run_dir, "config.yaml"))
            tracking = f"MLflow {tracker.uri} run {tracker.run_id}" if tracker.run_id else "tracking off"
            console.say(f"{cfg.name}: {precision.name}{' channels_last' if precision.channels_last else ''}, "
                        f"{strategy.world_size} worker{'s' if strategy.world_size > 1 else ''} ({cfg.strategy.kind}) "
                        f"on {strategy.device}; run dir {run_dir}; {tracking}"
                        + (f"; resumed from {ckpt} at kimg {trainer.kimg:.2f}" if ckpt else ""))
        return trainer.train()


def _status(exc_type) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"

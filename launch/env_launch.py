"""The env launcher: `gantry train` as one process of a group that torchrun or `accelerate launch`
started (how SLURM jobs and bare hosts run PyTorch; see launch/examples/). Every process runs
the same command with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in its environment, and joins that group; no Ray is started.

- The run takes the group's size as `workers`; a group of several processes runs `ddp` unless
  the config names another multi-process strategy.
- Under `accelerate launch` (its ACCELERATE_* variables) the settings of the user's `accelerate
  config` file are read: mixed precision and the DeepSpeed plugin's ZeRO stage become the run's
  `train.precision` and `strategy`; a setting gantry cannot honour (FSDP, offload, a DeepSpeed
  JSON of its own, gradient accumulation) or that contradicts the run's config is a config
  error. Accelerate's `PartialState` creates the process group (backend, rendezvous, device),
  so a multi-node accelerate config means what it means elsewhere. It gets nothing else: the
  networks, optimizers and loss scalers stay gantry's (one scaler per network,
  pipeline/strategy/single.py); under torchrun accelerate would add nothing and is not imported.
- Those checks read only the environment, which every rank shares, so a bad launch fails on
  every rank with the same line before any rank waits for another.
- Once joined, every rank checks that it sees what rank 0 writes in the run dir: on nodes
  without a shared disk, a resume would otherwise find no checkpoint (or another one) on the
  other nodes.
- The rest is `pipeline.worker.train_worker`, as under Ray: rank 0 tracks and checkpoints, each
  rank streams its share of every epoch's shard plan, `--resume` puts every rank at the same
  checkpoint and data position.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

from pipeline.config import ConfigError, RunConfig, with_overrides
from pipeline.errors import GantryError

# accelerate's mixed_precision -> train.precision ('no' is its default when a config says nothing)
ACCELERATE_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
# How gloo and NCCL word a collective that failed because another rank went away.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited", "communicator was aborted")
ACCELERATE_UNSUPPORTED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
                          "ACCELERATE_USE_PARALLELISM_CONFIG": "a parallelism config"}


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int
    local_world_size: int  # processes on this node
    by: str  # who started it, as error messages name it

    @property
    def accelerate(self) -> bool:
        return self.by == "accelerate launch"


def in_group(environ=os.environ) -> bool:
    return "WORLD_SIZE" in environ


def read_group(environ=os.environ) -> Group:
    """The group this process was started in; a ConfigError for a launch that cannot work."""
    by = ("accelerate launch" if "ACCELERATE_MIXED_PRECISION" in environ
          else "torchrun" if "TORCHELASTIC_RUN_ID" in environ else "the environment")

    def number(name: str, default: int | None = None) -> int:
        text = environ.get(name)
        if text is None and default is not None:
            return default
        if text is None or not text.strip().isdigit():
            raise ConfigError(f"{by}: {name}={text!r} (with WORLD_SIZE={environ.get('WORLD_SIZE')!r}) "
                              f"is not a non-negative whole number")
        return int(text)

    world, rank = number("WORLD_SIZE"), number("RANK")
    if not 0 <= rank < world:
        raise ConfigError(f"{by}: RANK={rank} is not below WORLD_SIZE={world}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if world > 1 and missing:
        raise ConfigError(f"{by}: WORLD_SIZE={world} is set but {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not; start gantry under torchrun or "
                          f"accelerate launch, or set both for every rank")
    return Group(rank, world, number("LOCAL_WORLD_SIZE", 1), by)


def joined_config(cfg: RunConfig, group: Group, environ=os.environ) -> RunConfig:
    """`cfg` as this group runs it: its size, its strategy, accelerate's settings."""
    source = f"{group.by} (WORLD_SIZE={group.world_size})"
    if cfg.workers not in (1, group.world_size):
        raise ConfigError(f"{source}: the config asks for workers={cfg.workers}; under {group.by} the "
                          f"number of processes it started decides (drop workers / --workers)")
    # a DeepSpeed plugin's strategy, below, comes later and wins
    overrides = [f"workers={group.world_size}", f"strategy.kind={cfg.strategy.for_group(group.world_size)}"]
    if group.accelerate:
        overrides += _accelerate_settings(cfg, environ, source)
    return with_overrides(cfg, overrides, source)


def group_config(cfg: RunConfig, environ=os.environ) -> tuple[RunConfig, Group]:
    """This process's group and `cfg` as it runs there; a ConfigError for a bad launch."""
    group = read_group(environ)
    return joined_config(cfg, group, environ), group


def _accelerate_settings(cfg: RunConfig, environ, source: str) -> list[str]:
    """The overrides an `accelerate config` file asks for, as `accelerate launch` passed them."""
    def on(name: str) -> bool:
        return environ.get(name, "").lower() in ("1", "true", "yes")

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{source}: the accelerate config asks for {what}, which gantry does not run")

    for name, what in ACCELERATE_UNSUPPORTED.items():
        if on(name):
            raise refuse(f"{what} (gantry's strategies are ddp and deepspeed)")
    if environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower() != "no":
        raise refuse(f"dynamo_backend {environ['ACCELERATE_DYNAMO_BACKEND']} (gantry does not compile the networks)")
    mixed = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mixed not in ACCELERATE_PRECISION:
        raise refuse(f"mixed_precision {mixed} (train.precision is fp32, bf16 or fp16)")
    out = []
    want, have = ACCELERATE_PRECISION[mixed], cfg.train.precision
    # 'no' is also what accelerate passes when its config says nothing: a precision the run's
    # config chose stands; a mixed precision the accelerate config chose must agree with it.
    if mixed != "no" and have not in ("auto", want):
        raise ConfigError(f"{source}: the accelerate config's mixed_precision is {mixed} but train.precision "
                          f"is {have}; make them agree")
    if mixed != "no" or have == "auto":
        out.append(f"train.precision={want}")
    if on("ACCELERATE_USE_DEEPSPEED"):
        if environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            raise refuse("a DeepSpeed JSON of its own (gantry builds one engine config per network; "
                         "give zero_stage in the accelerate config instead)")
        for part in ("OPTIMIZER", "PARAM"):
            device = environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{part}_DEVICE", "none").lower()
            if device != "none":
                raise refuse(f"offload_{part.lower()}_device {device}")
        if environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") != "1":
            raise refuse(f"gradient_accumulation_steps {environ['ACCELERATE_GRADIENT_ACCUMULATION_STEPS']}")
        if environ.get("ACCELERATE_GRADIENT_CLIPPING", "none").lower() not in ("none", "0", "0.0"):
            raise refuse(f"gradient_clipping {environ['ACCELERATE_GRADIENT_CLIPPING']}")
        stage = int(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", cfg.strategy.zero_stage))
        if cfg.strategy.kind == "ddp" or (cfg.strategy.kind == "deepspeed" and cfg.strategy.zero_stage != stage):
            raise ConfigError(f"{source}: the accelerate config asks for DeepSpeed ZeRO stage {stage} but the run's "
                              f"strategy is {cfg.strategy.kind}"
                              + (f" at stage {cfg.strategy.zero_stage}" if cfg.strategy.kind == "deepspeed" else "")
                              + "; make them agree")
        out += ["strategy.kind=deepspeed", f"strategy.zero_stage={stage}"]
    return out


def run_env(cfg: RunConfig, group: Group, resume: str | None = None,
            tracking_run_id: str | None = None) -> dict[str, float]:
    """Train `cfg` (already `joined_config`) as this process's rank of the group."""
    import torch

    from pipeline import console
    from pipeline.worker import train_worker

    # Both launchers set OMP_NUM_THREADS=1 for groups of several processes; this node's cores
    # (its share under SLURM: the affinity mask) split among its processes, as Ray workers do.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // group.local_world_size))
    if group.world_size > 1:
        joined = _join(group)
        _check_shared_run_dir(cfg, group)
        if group.rank == 0:
            console.say(f"joined {group.by}'s group: {group.world_size} processes, {joined}")
    try:
        return train_worker(cfg, resume=resume, tracking_run_id=tracking_run_id)
    except BaseException as e:
        # torchrun stops the whole group when one process dies (no restarts: it cannot know the
        # checkpoint to resume from); the survivors' collectives fail mid-step. One line says so.
        lost = _peer_lost(e) if group.world_size > 1 else None
        if lost is None:
            raise
        raise GantryError(f"rank {group.rank}: another process of the group stopped ({lost}); checkpoints "
                          f"so far are kept: launch again with --resume latest") from None


def _peer_lost(e: BaseException | None) -> str | None:
    """The first line of a collective's error about a lost peer in `e`'s chain, if any."""
    while e is not None:
        text = str(e).strip()
        if any(phrase in text for phrase in PEER_LOST):  # gloo's: "[<source file>] Read error …: …. <advice>"
            return re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]).split(". ")[0]
        e = e.__cause__ or e.__context__
    return None


def _join(group: Group) -> str:
    """Join the group; returns its backend (and accelerate's name for the set-up)."""
    import torch
    import torch.distributed as dist

    from pipeline.strategy import COLLECTIVE_TIMEOUT_S
    from pipeline.strategy.ddp import init_process_group

    if not group.accelerate:
        init_process_group()
        return dist.get_backend()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return f"{dist.get_backend()} ({state.distributed_type.value})"


def _check_shared_run_dir(cfg: RunConfig, group: Group) -> None:
    """A config error on every rank unless every rank reads what rank 0 writes in the run dir."""
    import torch.distributed as dist

    from pipeline import storage
    from pipeline.strategy.ddp import leave_process_group
    from pipeline.worker import run_dir_for

    token = [uuid.uuid4().hex]
    dist.broadcast_object_list(token, src=0)
    marker = storage.join(run_dir_for(cfg), f".launch-{token[0]}")
    if group.rank == 0:
        storage.write_bytes(marker, b"")
    dist.barrier()
    seen = [None] * group.world_size
    dist.all_gather_object(seen, storage.exists(marker))
    if group.rank == 0:
        storage.remove(marker)
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        leave_process_group(failed=True)  # every rank raises this; none waits for the others
        raise ConfigError(f"{group.by}: rank{'s' if len(blind) > 1 else ''} {', '.join(map(str, blind))} cannot "
                          f"see the run dir {run_dir_for(cfg)} that rank 0 writes (nodes without a shared disk); "
                          f"put train.out_dir on a shared file system or an object store (s3://…)")

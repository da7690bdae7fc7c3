"""How one worker holds, runs and updates G and D. The trainer sees only `Strategy`.

`single` is one process; `ddp` and `deepspeed` spread the same calls over a process group.
Nothing outside this package knows which one runs.
"""
from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.errors import GantryError
from pipeline.strategy.base import COLLECTIVE_TIMEOUT_S, Strategy


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


__all__ = ["COLLECTIVE_TIMEOUT_S", "Strategy", "make_strategy"]

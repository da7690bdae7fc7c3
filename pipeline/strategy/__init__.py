"""How one worker holds, runs and updates G and D. The trainer sees only `Strategy`.

`single` is one process; `ddp` and `deepspeed` spread the same calls over a process group.
Nothing outside this package knows which one runs.
"""
from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.strategy.base import Strategy


def make_strategy(cfg: RunConfig) -> Strategy:
    kind = cfg.strategy.kind
    if kind == "single":
        from pipeline.strategy.single import SingleStrategy
        return SingleStrategy()
    if kind == "ddp":
        from pipeline.strategy.ddp import DDPStrategy
        return DDPStrategy()
    if kind == "deepspeed":
        from pipeline.strategy.deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg.strategy.zero_stage, local_batch=cfg.train.batch // cfg.workers)
    raise ValueError(f"strategy {kind!r} is not available in this build")


__all__ = ["Strategy", "make_strategy"]

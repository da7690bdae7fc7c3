"""How one worker holds, runs and updates G and D. The trainer sees only `Strategy`.

`single` is one process; `ddp` and `deepspeed` spread the same calls over a process group.
Nothing outside this package and `pipeline/worker.py` (which picks one) knows which one runs.
"""
from __future__ import annotations

from pipeline.strategy.base import COLLECTIVE_TIMEOUT_S, Strategy

__all__ = ["COLLECTIVE_TIMEOUT_S", "Strategy"]

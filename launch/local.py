"""The single-process launcher: no Ray, the fastest path on one device and the debugging path."""
from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.errors import GantryError
from pipeline.worker import train_worker


def run_local(cfg: RunConfig, resume: str | None = None) -> dict[str, float]:
    if cfg.workers != 1 or cfg.strategy.kind != "single":
        raise GantryError(f"the local launcher runs one worker with strategy 'single' "
                          f"(got workers={cfg.workers}, strategy={cfg.strategy.kind}); use --launcher ray")
    return train_worker(cfg, resume=resume)

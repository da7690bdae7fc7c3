"""The shard plan: which shard files each rank streams in an epoch.

A pure function of (manifest, epoch, seed, world size), so a restarted worker, or the Ray driver
on another machine, computes the same lists.
"""
from __future__ import annotations

import random

from pipeline.errors import GantryError
from pipeline.shards.manifest import Manifest


def plan_shards(manifest: Manifest, epoch: int, seed: int, world_size: int) -> list[list[str]]:
    """Each rank's shard paths for `epoch`: disjoint, covering every shard once, shuffled per
    epoch, and balanced by sample count (greedy: the next shard goes to the lightest rank, so
    ranks differ by at most one shard's worth of samples)."""
    if world_size <= 0:
        raise GantryError(f"world size must be positive, got {world_size}")
    if len(manifest.shards) < world_size:
        raise GantryError(f"{manifest.root}: {len(manifest.shards)} shards cannot feed {world_size} ranks; "
                          f"rebuild with a smaller --shard-size")
    order = list(manifest.shards)
    random.Random(f"plan/{seed}/{epoch}").shuffle(order)
    plan: list[list[str]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for entry in order:
        rank = min(range(world_size), key=lambda r: (load[r], len(plan[r]), r))
        plan[rank].append(str(manifest.path(entry)))
        load[rank] += entry.samples
    return plan

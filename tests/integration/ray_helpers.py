"""A small real-MNIST shard set and the `gantry train` command line for the Ray tests."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BATCH = 32  # global: 16 per worker, so each rank's 512 samples are 32 full batches an epoch


def build_mnist(out: Path) -> Path:
    """1024 real MNIST digits padded to 32x32, in 8 shards of 128 (4 per rank at 2 workers)."""
    from pipeline.shards import build_shards

    build_shards("mnist", out, 32, shard_size=128, pad=True, limit=1024, workers=1)
    return out


def train_cmd(shards: Path, out_dir: Path, kimg: float, checkpoint_kimg: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train", "configs/mnist-dcgan.yaml",
            f"data.path={shards}", f"train.out_dir={out_dir}", f"train.kimg={kimg}", f"train.batch={BATCH}",
            f"train.checkpoint_kimg={checkpoint_kimg}", "train.eval_kimg=1000", "train.log_every=8",
            "train.precision=fp32", "tracking.enabled=false", *extra]


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """(meta, state) of the newest checkpoint of a run."""
    from pipeline import checkpoint

    latest = checkpoint.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest is not None, f"no checkpoint under {run_dir}"
    state = torch.load(Path(latest) / "state.pt", weights_only=True)
    return checkpoint.read_meta(latest), state


def held_checkpoint(run_dir: Path) -> str | None:
    """The name of the run's newest committed checkpoint (what a restarted group resumes from)."""
    from pipeline import checkpoint

    latest = checkpoint.latest_checkpoint(str(run_dir / "checkpoints"))
    return Path(latest).name if latest else None


def worker_pid(log: str, rank: int) -> int | None:
    """The pid of the Ray Train worker of `rank`, from the line Ray prints when it starts a group
    (the first group's, when a restart printed more)."""
    import re

    found = re.search(rf"pid=(\d+)\) world_rank={rank}\b", log)
    return int(found.group(1)) if found else None


def loader_worker_pid(pid: int) -> int | None:
    """A DataLoader worker of the process `pid`: a child forked from it (same command line)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        forks = [c.pid for c in parent.children() if c.cmdline() == parent.cmdline()]
    except psutil.Error:  # one of them exited while we looked
        return None
    return forks[0] if forks else None


def stop_tree(proc) -> None:
    """SIGKILL a driver started by a test and every process under it (Ray's included), by pid."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.kill()
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=10)

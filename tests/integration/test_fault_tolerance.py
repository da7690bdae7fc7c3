"""Ray Train restarts a failed worker group (FailureConfig); it resumes from the run's newest checkpoint,
with every rank's data position, and the run finishes on its own at the configured length:

- a worker process SIGKILLed mid-run;
- a rank that raises while the other waits in a collective (its DataLoader worker SIGKILLed,
  as the OOM killer does): the failing rank must leave without entering a collective, or both
  sit until the collective timeout and Ray never learns that anything failed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from ray_helpers import (BATCH, REPO, build_mnist, final_state, held_checkpoint, loader_worker_pid, stop_tree,
                         train_cmd, worker_pid)

KIMG = 3.2  # 100 steps
CKPT_KIMG = 0.64  # every 20 steps
PER_EPOCH = 512 // (BATCH // 2)  # batches per rank per epoch: 32
RESTART_WITHIN_S = 60  # from a rank's failure to the restarted group's "resuming from" line
RESTARTED = "worker group restarted; resuming from"


def _start(tmp_path, kimg: float, ckpt_kimg: float, *extra: str) -> tuple[subprocess.Popen, object]:
    shards = build_mnist(tmp_path / "shards")
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(train_cmd(shards, tmp_path, kimg, ckpt_kimg, "--workers", "2", *extra),
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


def _rank1_once_held(proc, log_path, run_dir, timeout: float = 300) -> tuple[int, str]:
    """(rank 1's worker pid, the run's newest checkpoint), once there is one. Ray prints each
    worker's pid and rank when it starts the group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        rank1, held = worker_pid(log_path.read_text(), rank=1), held_checkpoint(run_dir)
        if rank1 and held:
            return rank1, held
        time.sleep(0.1)
    raise AssertionError("no checkpoint before the deadline:\n" + log_path.read_text()[-3000:])


def _check_resumed_and_finished(tmp_path, out: str, kimg: float, killed_after: str) -> int:
    """The run restarted from a checkpoint taken mid-run, not from zero, and ended where it was
    configured to. Returns the number of steps."""
    assert "terminate called" not in out
    assert RESTARTED in out, out[-3000:]
    resumed = [float(k) for k in re.findall(r"resumed from \S+ at kimg ([\d.]+)", out)]
    assert resumed and all(0 < k < kimg for k in resumed), resumed
    assert round(resumed[0] * 1000 / BATCH) >= int(killed_after[5:])
    meta, _ = final_state(tmp_path / "mnist-dcgan")
    steps = round(kimg * 1000 / BATCH)
    assert meta["step"] == steps
    return steps


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(tmp_path):
    proc, log_path = _start(tmp_path, KIMG, CKPT_KIMG, "--strategy", "ddp")
    try:
        victim, held = _rank1_once_held(proc, log_path, tmp_path / "mnist-dcgan")
        os.kill(victim, signal.SIGKILL)
        rc = proc.wait(timeout=600)
    finally:
        stop_tree(proc)
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    steps = _check_resumed_and_finished(tmp_path, out, KIMG, held)
    # every rank went on from its saved stream position: after `steps` batches in all, each
    # rank sits where an uninterrupted stream would; a restart from an epoch start would not
    _, state = final_state(tmp_path / "mnist-dcgan")
    want = (((steps - 1) // PER_EPOCH), (steps - 1) % PER_EPOCH + 1)
    assert [(d["epoch"], d["batches"]) for d in state["data"]] == [want, want]
    assert "data stream shape changed" not in out


LOADER_KIMG = 1.92  # 60 steps: epoch 1 (steps 33-64) starts after the first checkpoints, then resume
LOADER_CKPT_KIMG = 0.32  # every 10 steps


def _fresh_loader_worker(proc, log_path, run_dir, timeout: float = 300) -> tuple[int, str]:
    """(pid of a DataLoader worker of rank 1 that started after the run saved a checkpoint, that
    checkpoint). A worker started then has a whole epoch to deliver; one that had already
    queued its last batch could die unnoticed."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        rank1 = worker_pid(log_path.read_text(), rank=1)
        held = held_checkpoint(run_dir)
        loader = loader_worker_pid(rank1) if rank1 else None
        if loader and held and loader not in seen and seen:
            return loader, held
        if loader:
            seen.add(loader)
        time.sleep(0.1)
    raise AssertionError("no new loader worker after a checkpoint:\n" + log_path.read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_rank_failing_beside_a_collective_restarts_the_group(tmp_path, strategy):
    proc, log_path = _start(tmp_path, LOADER_KIMG, LOADER_CKPT_KIMG, "--strategy", strategy, "data.loader_workers=1")
    try:
        victim, held = _fresh_loader_worker(proc, log_path, tmp_path / "mnist-dcgan")
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # rank 1 raises ("DataLoader worker ... exited unexpectedly") while rank 0 waits in the
        # gradient all-reduce; Ray must see the group fail and restart it, well before any
        # collective timeout.
        while RESTARTED not in log_path.read_text() and proc.poll() is None:
            assert time.monotonic() - killed < RESTART_WITHIN_S, (
                f"no restart {RESTART_WITHIN_S} s after the kill:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)
        restart_s = time.monotonic() - killed
        rc = proc.wait(timeout=300)
    finally:
        stop_tree(proc)
    out = log_path.read_text()
    print(f"{strategy}: kill -> restart line {restart_s:.1f} s")
    assert rc == 0, out[-3000:]
    assert re.search(r"DataLoader worker \(pid\(?s?\)? ?\d+\)", out), out[-3000:]  # the failure we caused
    _check_resumed_and_finished(tmp_path, out, LOADER_KIMG, held)

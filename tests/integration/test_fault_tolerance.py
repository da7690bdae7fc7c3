"""Ray Train restarts a failed worker group (FailureConfig); it resumes from the run's newest checkpoint,
and the run finishes on its own at the configured length, when a rank raises while the other
waits in a collective (its DataLoader worker SIGKILLed, as the OOM killer does): the failing rank
must leave without entering a collective, or both sit until the collective timeout and Ray never
learns that anything failed. (A worker process SIGKILLed mid-run: tests/integration/test_two_nodes.py.)
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from ray_helpers import (RESTARTED, REPO, build_mnist, check_resumed_and_finished, held_checkpoint,
                         loader_worker_pid, stop_tree, train_cmd, worker_pid)

RESTART_WITHIN_S = 60  # from a rank's failure to the restarted group's "resuming from" line


def _start(tmp_path, kimg: float, ckpt_kimg: float, *extra: str) -> tuple[subprocess.Popen, object]:
    shards = build_mnist(tmp_path / "shards")
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(train_cmd(shards, tmp_path, kimg, ckpt_kimg, "--workers", "2", *extra),
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


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
        # rank 1 raises while rank 0 waits in the gradient all-reduce; Ray must see the group fail
        # and restart it, well before any collective timeout.
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
    # the failure we caused: torch names the dead worker, unless it died while handing over a batch's
    # file descriptor, and then the rank's fetch of it fails instead (1 CI run in about 30), in
    # rebuild_storage_fd with a ConnectionResetError or an EOFError
    assert re.search(r"DataLoader worker \(pid\(?s?\)? ?\d+\)|ConnectionResetError|rebuild_storage_fd", out), \
        out[-3000:]
    check_resumed_and_finished(tmp_path / "mnist-dcgan", out, LOADER_KIMG, held)

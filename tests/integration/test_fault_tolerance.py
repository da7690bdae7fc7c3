"""A worker SIGKILLed mid-run: Ray Train restarts the worker group (FailureConfig), the group
resumes from the last reported checkpoint, with every rank's data position, and the run
finishes on its own at the configured length."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from ray_helpers import BATCH, REPO, build_mnist, final_state, train_cmd

KIMG = 3.2  # 100 steps
CKPT_KIMG = 0.64  # every 20 steps
PER_EPOCH = 512 // (BATCH // 2)  # batches per rank per epoch: 32


def _held_checkpoint(storage) -> str | None:
    """The newest checkpoint Ray Train has registered (what a restart gets), if any."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except json.JSONDecodeError:  # caught mid-write
            return None
        return latest["checkpoint_dir_name"] if latest else None
    return None


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(tmp_path):
    shards = build_mnist(tmp_path / "shards")
    log_path = tmp_path / "driver.log"
    cmd = train_cmd(shards, tmp_path, KIMG, CKPT_KIMG, "--workers", "2", "--strategy", "ddp")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        reported = tmp_path / "mnist-dcgan" / "ray"  # Ray's copies of reported checkpoints
        deadline = time.monotonic() + 300
        victim = None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            # Ray prints each worker's pid and rank when it starts the group, and snapshots
            # its checkpoint manager once it has registered a reported checkpoint.
            found = re.search(r"pid=(\d+)\) world_rank=1\b", log_path.read_text())
            held = _held_checkpoint(reported)
            if found and held:
                victim = int(found.group(1))
            time.sleep(0.1)
        assert victim is not None, log_path.read_text()[-3000:]
        killed_after = int(held[5:])
        os.kill(victim, signal.SIGKILL)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert "terminate called" not in out

    # restarted, and resumed from a checkpoint taken mid-run, not from zero
    assert "worker group restarted; resuming from" in out, out[-3000:]
    resumed = [float(k) for k in re.findall(r"resumed from \S+ at kimg ([\d.]+)", out)]
    assert resumed and all(0 < k < KIMG for k in resumed), resumed
    assert round(resumed[0] * 1000 / BATCH) >= killed_after
    # the run ends where it was configured to
    meta, state = final_state(tmp_path / "mnist-dcgan")
    steps = round(KIMG * 1000 / BATCH)
    assert meta["step"] == steps
    # every rank went on from its saved stream position: after `steps` batches in all, each
    # rank sits where an uninterrupted stream would; a restart from an epoch start would not
    want = (((steps - 1) // PER_EPOCH), (steps - 1) % PER_EPOCH + 1)
    assert [(d["epoch"], d["batches"]) for d in state["data"]] == [want, want]
    assert "data stream shape changed" not in out

"""`gantry train` under torchrun and `accelerate launch` (no Ray): a rank killed mid-run and a
relaunch with `--resume latest` that goes on from the last checkpoint and the saved stream
position, and bad launches that end every rank with one line instead of a hang."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_helpers import BATCH, REPO, build_mnist, check_data_position, final_state, in_cmdline, in_environ, matching, \
    survivors, train_cmd
from servers import free_port

BIN = Path(sys.executable).parent
KIMG = 2.048  # 64 steps at batch 32: two epochs of each rank's 512 samples


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    return build_mnist(tmp_path_factory.mktemp("mnist") / "shards")


def torchrun(nproc: int) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc)]


def gantry_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if ln.startswith("gantry: ")]


@pytest.mark.slow
def test_killed_rank_relaunched_with_resume_latest_goes_on(mnist_shards, tmp_path):
    train = train_cmd(mnist_shards, tmp_path, KIMG, 0.256, verbose=False)[1:]
    checkpoints = tmp_path / "mnist-dcgan" / "checkpoints"
    ours = in_cmdline(str(tmp_path))  # the ranks (and their loader workers) of this run
    proc = subprocess.Popen(torchrun(2) + train, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints / "ckpt-000000008" / "meta.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        rank1 = matching(lambda p: p.ppid() == proc.pid and in_environ("RANK", "1")(p))  # not its loader workers
        assert rank1, "rank 1 is not running"
        rank1[0].kill()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = survivors(ours, within=30)
    assert not left, left
    assert proc.returncode != 0, out[-3000:]
    killed_at = final_state(tmp_path / "mnist-dcgan")[0]["step"]
    assert 8 <= killed_at < 64, killed_at  # the run stopped midway, with a checkpoint behind it
    # the surviving rank says what happened in one line and keeps no traceback on the console
    lost = [ln for ln in out.splitlines() if "another process of the group stopped" in ln]
    assert len(lost) == 1 and lost[0].startswith("gantry: rank 0: ") and "--resume latest" in lost[0], out[-3000:]
    assert not re.search(r'File ".*/(launch|pipeline|models)/', out), out[-3000:]  # torchrun's own report aside

    r = subprocess.run(torchrun(2) + train + ["--resume", "latest"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    resumed = [ln for ln in gantry_lines(r) if "resumed from" in ln]
    assert len(resumed) == 1 and f"ckpt-{killed_at:09d}" in resumed[0], gantry_lines(r)
    meta, _ = final_state(tmp_path / "mnist-dcgan")
    assert meta["step"] == round(KIMG * 1000 / BATCH)
    check_data_position(tmp_path / "mnist-dcgan", meta["step"])


ACCELERATE_DEEPSPEED_FP16 = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 1
mixed_precision: fp16
num_machines: 1
num_processes: 2
machine_rank: 0
main_process_port: {port}
use_cpu: false
"""


@pytest.mark.slow
def test_bad_launches_end_every_rank_with_one_line(mnist_shards, tmp_path):
    train = train_cmd(mnist_shards, tmp_path, KIMG, 0.256, verbose=False)[1:]
    # WORLD_SIZE without a rendezvous address: a hand-made launch that forgot MASTER_ADDR/PORT
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable] + train, cwd=REPO, env={**env, "WORLD_SIZE": "2", "RANK": "0"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == ["gantry: config error: the environment: WORLD_SIZE=2 is set but MASTER_ADDR and "
                                     "MASTER_PORT are not; start gantry under torchrun or accelerate launch, "
                                     "or set both for every rank"], r.stderr

    # 3 processes cannot split a batch of 32: each of them says so
    r = subprocess.run(torchrun(3) + train, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = gantry_lines(r)
    assert lines == ["gantry: config error: torchrun (WORLD_SIZE=3): train.batch (32) is not divisible by "
                     "workers (3)"] * 3, lines

    # accelerate's fp16 with its DeepSpeed plugin: gantry's fp16 runs with one scaler per network, not DeepSpeed's
    config = tmp_path / "accelerate.yaml"
    config.write_text(ACCELERATE_DEEPSPEED_FP16.format(port=free_port()))
    r = subprocess.run([str(BIN / "accelerate"), "launch", "--config_file", str(config)] + train
                       + ["train.precision=auto"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = gantry_lines(r)
    assert len(lines) == 2 and len(set(lines)) == 1 and "fp16" in lines[0] and "deepspeed" in lines[0], lines
    assert not (tmp_path / "mnist-dcgan" / "checkpoints").exists()  # nothing ran


def test_ranks_that_cannot_see_the_run_dir_stop(mnist_shards, tmp_path):
    """A relative train.out_dir from different working directories is two run dirs, as on nodes
    without a shared disk: both ranks stop before training."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        train = train_cmd(mnist_shards, "runs", KIMG, 0.256, verbose=False)[1:]
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable] + train, cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 2, err[-3000:]
        [line] = err.splitlines()
        assert re.fullmatch(r"gantry: config error: the environment: rank 1 cannot see the run dir \S+ that rank 0 writes .*", line)

"""Two Ray nodes that share no disk, on this host: each `ray start` has its own loopback
address (127.0.0.2, 127.0.0.3), working directory, TMPDIR and Ray temp dir, and its workers
inherit them. Shards, checkpoints, sample grids and the evaluation cache (which rank 0 prepares
and rank 1 reads) live on an S3-compatible server (moto) on 127.0.0.1; that bucket and the
credentials in the environment are all the nodes share. Two workers, one per node
(STRICT_SPREAD).

- a run trains, evaluates, exits 0 and leaves every file it wrote in the bucket, none on a disk;
- a worker SIGKILLed mid-run: Ray restarts the group, which resumes from the bucket's newest
  checkpoint with every rank's data position and finishes at the configured step;
- a local run dir on a cluster of two nodes is refused at start-up.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline import checkpoint, storage
from ray_helpers import (BATCH, REPO, RayNode, build_mnist, check_data_position, check_resumed_and_finished,
                         final_state, held_checkpoint, in_environ, stop_tree, survivors, train_cmd, worker_pid)

KIMG, CKPT_KIMG = 0.512, 0.256  # 16 steps, checkpoints at 8 and 16
KILL_KIMG, KILL_CKPT_KIMG = 1.92, 0.64  # 60 steps (into the second epoch), a checkpoint every 20
EVAL = ["eval.metrics=[fid]", "eval.n_real=256", "eval.n_fake=256", "eval.classifier_steps=40"]


class Cluster:
    """Two nodes, `a` (the head) and `b`, under `root`; `driver/` is where `gantry` is typed."""

    def __init__(self, root: Path, env: dict, nodes: dict[str, RayNode]):
        """Fills `nodes` as it starts them, so that whoever passed it can stop them whatever happens."""
        self.root, self.nodes = root, nodes
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            for sub in ("work", "tmp"):
                (root / name / sub).mkdir(parents=True)
            node_env = dict(env, TMPDIR=str(root / name / "tmp"))
            join = self.nodes["a"].address if self.nodes else None
            self.nodes[name] = RayNode(root / name / "ray", node_env, cwd=root / name / "work", join=join, ip=ip)
            if join is None:
                self.nodes[name].wait_listening()
        self.nodes["b"].wait_started()  # a cluster of two nodes, not one that is still growing
        (root / "driver" / "tmp").mkdir(parents=True)
        self.env = dict(env, TMPDIR=str(root / "driver" / "tmp"))

    def train(self, data: str, out_dir: str, kimg: float, ckpt_kimg: float, *extra: str):
        log_path = self.root / "driver.log"
        cmd = train_cmd(data, out_dir, kimg, ckpt_kimg, "--workers", "2", "--strategy", "ddp",
                        "--address", self.nodes["a"].address, "--placement", "STRICT_SPREAD", *extra)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=self.root / "driver", env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)
        return proc, log_path

    def placement(self, proc, log_path: Path, timeout: float = 300) -> dict[int, tuple[str, str, str]]:
        """{rank: (node, working directory, TMPDIR)} of the training workers, read from /proc
        while they run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            pids = {rank: worker_pid(log_path.read_text(), rank) for rank in (0, 1)}
            if all(pids.values()):
                found = {}
                for rank, pid in pids.items():
                    p = psutil.Process(pid)
                    node = next(n for n, node in self.nodes.items() if node.owns(pid))
                    found[rank] = (node, p.cwd(), p.environ().get("TMPDIR"))
                return found
            time.sleep(0.2)
        raise AssertionError("training workers not seen:\n" + log_path.read_text()[-3000:])

    def files_on_disks(self) -> list[str]:
        """Files under the nodes' and the driver's directories, Ray's own temp dirs aside."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if p.is_file() and "ray" not in p.relative_to(self.root).parts[1:2] and p.name != "driver.log")


@pytest.fixture(scope="module")
def cluster(s3):
    marker = secrets.token_hex(8)
    root = Path(tempfile.mkdtemp(prefix="g2n", dir="/tmp"))  # Ray's socket paths: short
    # The nodes get the object store's endpoint and keys from the environment, as pods get them
    # from a secret; PYTHONPATH so their workers import this checkout.
    # Ray's token authentication, with a token of this cluster's own, on every node and the driver.
    env = dict(os.environ, PYTHONPATH=str(REPO), GANTRY_TEST_NODE=marker, RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    nodes: dict[str, RayNode] = {}
    try:
        yield Cluster(root, env, nodes)
    finally:
        tree = set()
        for node in reversed(list(nodes.values())):
            tree |= node.stop()
        marked = in_environ("GANTRY_TEST_NODE", marker)
        left = survivors(lambda p: p in tree or marked(p), within=20)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, "processes the Ray nodes started outlived them:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def bucket_shards(s3):
    bucket = s3.bucket("two-nodes")
    return bucket, build_mnist(f"{bucket}/mnist-32")


def _run(cluster, data, out_dir, kimg, ckpt_kimg, *extra, during=None):
    """Train on the cluster; `during(proc, log_path)` runs while it does. Returns (rc, output, during's result)."""
    proc, log_path = cluster.train(data, out_dir, kimg, ckpt_kimg, *extra)
    try:
        seen = during(proc, log_path) if during else None
        rc = proc.wait(timeout=600)
    finally:
        stop_tree(proc)
    return rc, log_path.read_text(), seen


@pytest.mark.slow
def test_two_nodes_train_from_and_into_the_bucket(cluster, bucket_shards):
    bucket, data = bucket_shards
    runs = f"{bucket}/runs"
    rc, out, placed = _run(cluster, data, runs, KIMG, CKPT_KIMG, f"train.eval_kimg={KIMG}", *EVAL,
                           during=cluster.placement)
    assert rc == 0, out[-3000:]
    assert "terminate called" not in out
    # one worker per node, each working inside its own node's directory (Ray Train moves a
    # worker into its node's <ray temp>/session_*/artifacts/<run>) with that node's TMPDIR
    assert sorted(node for node, _, _ in placed.values()) == ["a", "b"]
    for node, cwd, tmp in placed.values():
        assert Path(cwd).is_relative_to(cluster.root / node) and tmp == str(cluster.root / node / "tmp"), (node, cwd, tmp)
    assert re.search(r"gantry: finished .*\bfid \d", out), out[-2000:]

    run = f"{runs}/mnist-dcgan"
    steps = round(KIMG * 1000 / BATCH)
    assert [storage.basename(c) for c in checkpoint.list_checkpoints(f"{run}/checkpoints")] == \
        [f"ckpt-{steps // 2:09d}", f"ckpt-{steps:09d}"]
    assert storage.list_names(f"{run}/samples") == [f"grid-{steps:09d}.png"]
    assert storage.exists(f"{run}/config.yaml")
    cache = storage.list_names(f"{runs}/.cache")  # rank 0 prepared it, rank 1 on the other node read it
    assert any(n.startswith("real-") for n in cache) and any(n.startswith("classifier-") for n in cache), cache
    meta, state = final_state(run)
    assert meta["step"] == steps and [d["geometry"]["rank"] for d in state["data"]] == [0, 1]
    assert cluster.files_on_disks() == []


def test_a_local_path_on_two_nodes_is_refused_at_start_up(cluster, bucket_shards, tmp_path):
    _, data = bucket_shards
    rc, out, _ = _run(cluster, data, str(tmp_path / "runs"), KIMG, CKPT_KIMG)
    assert rc == 2, out[-3000:]
    assert f"gantry: config error: train.out_dir {tmp_path / 'runs'} is on this machine's disk" in out, out[-3000:]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing trained, nothing written


def _kill_rank1_once_held(cluster, run_dir):
    def during(proc, log_path, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            rank1, held = worker_pid(log_path.read_text(), rank=1), held_checkpoint(run_dir)
            if rank1 and held:
                node = next(n for n, node in cluster.nodes.items() if node.owns(rank1))
                os.kill(rank1, signal.SIGKILL)
                return node, held
            time.sleep(0.2)
        raise AssertionError("no checkpoint in the bucket before the deadline:\n" + log_path.read_text()[-3000:])
    return during


@pytest.mark.slow
def test_a_worker_killed_on_one_node_resumes_from_the_bucket(cluster, bucket_shards):
    bucket, data = bucket_shards
    runs = f"{bucket}/runs-killed"
    run = f"{runs}/mnist-dcgan"
    rc, out, (node, held) = _run(cluster, data, runs, KILL_KIMG, KILL_CKPT_KIMG,
                                 during=_kill_rank1_once_held(cluster, run))
    assert rc == 0, out[-3000:]
    assert re.search(rf"resuming from {re.escape(run)}/checkpoints/ckpt-\d+", out), out[-3000:]
    steps = check_resumed_and_finished(run, out, KILL_KIMG, held)
    check_data_position(run, steps)
    assert "data stream shape changed" not in out
    assert cluster.files_on_disks() == []

"""Runs whose data, run dir and checkpoints live on object storage: a real S3-compatible server
(moto) and a real HTTP server on loopback. Nothing the run writes lands on the local disk."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from pipeline import checkpoint, storage
from pipeline.data import ShardStream
from ray_helpers import REPO, build_mnist
from servers import HttpServer, S3Server, free_port

SMALL = ["train.batch=32", "train.log_every=8", "train.precision=fp32", "tracking.enabled=false",
         "train.eval_kimg=1000", "eval.metrics=[]"]


def gantry(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run from an empty folder: a relative path anywhere would land there and be seen.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _local_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_shards_runs_and_checkpoints_on_s3(s3, tmp_path):
    bucket = s3.bucket("gantry-runs")
    data, runs = f"{bucket}/mnist-32", f"{bucket}/runs"
    work = tmp_path / "work"
    work.mkdir()
    r = gantry("shards", "build", "mnist", data, "--resolution", "32", "--pad", "--limit", "512",
               "--shard-size", "128", "--workers", "1", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert gantry("shards", "verify", data, cwd=work).returncode == 0

    common = ["configs/mnist-dcgan.yaml".replace("configs", str(REPO / "configs")), f"data.path={data}",
              f"train.out_dir={runs}", "train.checkpoint_kimg=0.256", "model.conditional=true", *SMALL]
    r = gantry("train", *common, "train.kimg=0.512", "train.eval_kimg=0.512", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    run = f"{runs}/mnist-dcgan"
    assert [Path(c).name for c in checkpoint.list_checkpoints(f"{run}/checkpoints")] == \
        ["ckpt-000000008", "ckpt-000000016"]
    assert storage.list_names(f"{run}/samples") == ["grid-000000016.png"]
    assert storage.exists(f"{run}/config.yaml")
    # the driver's log went up with the run, and the console says where
    logs = storage.list_names(f"{run}/logs")
    assert len(logs) == 1 and logs[0].startswith("train-"), logs
    assert f"log {run}/logs/{logs[0]}" in r.stdout.splitlines()[-1]
    assert "gantry: saved ckpt-000000016" in storage.read_bytes(f"{run}/logs/{logs[0]}").decode()

    r = gantry("train", *common, "train.kimg=0.768", "--resume", "latest", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from s3://gantry-runs/runs/mnist-dcgan/checkpoints/ckpt-000000016 at kimg 0.51" in r.stdout
    assert checkpoint.read_meta(checkpoint.latest_checkpoint(f"{run}/checkpoints"))["step"] == 24

    # labelled synthetic shards from the bucket's checkpoint into the bucket, readable from there
    synthetic = f"{bucket}/synthetic"
    r = gantry("export", f"{run}/checkpoints", synthetic, "--n", "5", "--per-class", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert gantry("shards", "verify", synthetic, cwd=work).returncode == 0
    manifest = json.loads(storage.read_bytes(f"{synthetic}/manifest.json"))
    assert manifest["samples"] == 50 and len(manifest["classes"]) == 10
    assert sorted(storage.list_names(synthetic)) == sorted([s["url"] for s in manifest["shards"]] + ["manifest.json"])
    assert _local_files(work) == []  # everything went to the bucket


def test_http_shards_stream_the_same_batches_as_the_disk(tmp_path):
    shards = build_mnist(tmp_path / "shards")
    server = HttpServer(tmp_path / "shards", tmp_path)
    try:
        def first(location):
            stream = ShardStream(location, batch=16, seed=3, loader_workers=0)
            return [next(stream) for _ in range(3)]

        for (a, la), (b, lb) in zip(first(str(shards)), first(server.url)):
            assert torch.equal(a, b) and torch.equal(la, lb)
    finally:
        server.stop()


class _FailingShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, except that one shard answers 500 every time."""

    def do_GET(self):
        if self.path.endswith("-000001.tar"):
            self.send_error(500, "backend down")
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


def test_a_5xx_mid_run_follows_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    shards = build_mnist(tmp_path / "shards")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             partial(_FailingShardHandler, directory=str(shards)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        skipping = ShardStream(url, batch=128, seed=0, loader_workers=0, shuffle_buffer=0, on_error="skip")
        seen = sum(len(next(skipping)[0]) for _ in range(7))  # 8 shards of 128, one unreadable
        assert seen == 7 * 128 and skipping.state_dict()["skipped"]["shards"] == 1
        failing = ShardStream(url, batch=128, seed=0, loader_workers=0, shuffle_buffer=0, on_error="fail")
        with pytest.raises(Exception, match=r"mnist-000001.tar: cannot read shard \(.*500"):
            for _ in range(8):
                next(failing)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def s3_checking_keys(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto-auth"), check_keys=True)
    yield server
    server.stop()


@pytest.mark.parametrize("case", ["missing bucket", "wrong credentials", "unreachable endpoint", "unknown scheme"])
def test_bad_storage_is_one_line_at_start_up(s3, s3_checking_keys, tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    out, env_url = {"missing bucket": ("s3://no-such-bucket/runs", s3.url),
                    "wrong credentials": ("s3://any/runs", s3_checking_keys.url),
                    "unreachable endpoint": ("s3://any/runs", f"http://127.0.0.1:{free_port()}"),
                    "unknown scheme": ("ftp://host/runs", s3.url)}[case]
    os.environ["AWS_ENDPOINT_URL"] = env_url
    # botocore's own five attempts with backoff take ~7 s a call against a closed port; gantry's
    # retries, which the message names, are what is under test.
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    try:
        r = gantry("train", str(REPO / "configs/toy-ring.yaml"), f"train.out_dir={out}", "tracking.enabled=false",
                   cwd=work)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3.url
        del os.environ["AWS_MAX_ATTEMPTS"]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == (2 if case == "unknown scheme" else 1), r.stderr
    assert len(lines) == 1 and out in lines[0], r.stderr
    if case == "wrong credentials":
        assert "PermissionError" in lines[0] and "Access Key" in lines[0], lines[0]
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in r.stderr + r.stdout
    assert _local_files(work) == []


def test_a_shard_that_differs_from_its_manifest_is_named(s3, tmp_path):
    bucket = s3.bucket("tampered")
    work = tmp_path / "work"
    work.mkdir()
    assert gantry("shards", "build", "mnist", f"{bucket}/d", "--resolution", "32", "--pad", "--limit", "256",
                  "--shard-size", "128", "--workers", "1", cwd=work).returncode == 0
    storage.write_bytes(f"{bucket}/d/mnist-000001.tar", b"not the shard")
    r = gantry("shards", "verify", f"{bucket}/d", cwd=work)
    assert r.returncode == 1 and "mnist-000001.tar: is 13 bytes, manifest says" in r.stdout, r.stdout

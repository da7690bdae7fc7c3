"""Storage servers for tests, on free 127.0.0.1 ports, each in its own process group and
stopped by PID: moto's standalone S3-compatible server (the one s3fs's own suite uses) and a
plain `python -m http.server` for read-only shards."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """`n` different free ports: each socket stays bound until all are chosen, since the kernel
    may hand a just-released port out again (a Ray head once got one port for two components)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class Server:
    """A subprocess serving HTTP on 127.0.0.1:port, ready once `probe` answers at all."""

    def __init__(self, cmd: list[str], port: int, log: Path, cwd: Path | None = None, env: dict | None = None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}; see {log}")
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers, even if not with 200
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{cmd[0]} not answering on {self.url}; see {log}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class S3Server(Server):
    """moto_server. `env` holds what a client needs (endpoint, any key: moto accepts every
    key unless told to check them); `bucket(name)` creates a bucket. With `check_keys` moto
    authenticates every request, and refuses every key, since it knows none."""

    def __init__(self, root: Path, check_keys: bool = False):
        port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0") if check_keys else None
        super().__init__([str(moto), "-H", "127.0.0.1", "-p", str(port)], port, root / "moto.log", env=env)
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "gantry-test-key",
                    "AWS_SECRET_ACCESS_KEY": "gantry-test-secret-value", "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket=name)
        return f"s3://{name}"


class HttpServer(Server):
    """`python -m http.server` serving `root` read-only."""

    def __init__(self, root: Path, log_dir: Path):
        port = free_port()
        super().__init__([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], port,
                         log_dir / "http.log", cwd=root)

"""A real MLflow tracking server for integration tests.

`mlflow_server` starts `mlflow server` (SQLite backend, proxied artifacts, one worker, no job
runner: the lean setting from FACTS.md) on a free 127.0.0.1 port and yields a handle whose
`uri` is the tracking URI. `stop()` / `start()` take the same server down and bring it back on
the same port and the same SQLite file, to test outages mid-run. It is stopped by PID (its
process group) at the end of the session.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __str__(self) -> str:
        return self.uri

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until /health answers."""
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(mlflow), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = open(self.root / "server.log", "ab")
        # Own process group: stop() ends the server and the worker it forks, by PID.
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}; see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {timeout} s; see {self.root / 'server.log'}")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 15 s) and wait for it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    yield server
    server.stop()

"""`gantry submit` / `gantry jobs` against a real Ray head on loopback (its dashboard serves the
Jobs API), training the toy ring as a job that tracks to the real MLflow test server."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ray_helpers import RayNode, in_cmdline, in_environ, survivors
from servers import free_port

REPO = Path(__file__).resolve().parents[2]
GANTRY = [sys.executable, "-m", "launch.cli"]
SMALL = ["train.kimg=4", "train.eval_kimg=2", "train.checkpoint_kimg=2", "train.log_every=5"]


def gantry(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*GANTRY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def jobs_api(address: str, path: str):
    """GET the Jobs REST API with the head's token. (Ray reads RAY_AUTH_MODE once per process,
    before this module's fixture sets it, so this process cannot use Ray's own client.)"""
    request = urllib.request.Request(f"{address}/api/jobs/{path}",
                                     headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group (so it is stopped by PID, never by
    `ray stop`, which would end every Ray on the machine), with token authentication on and a
    token of its own that this process and the `gantry` commands get through the environment;
    yields the Jobs API address. Teardown leaves nothing behind and fails if anything the head
    started outlived it: Ray's own processes, job supervisors, job entrypoints and their
    children, orphaned or not. They are found as the head's descendants and by the variable
    GANTRY_TEST_HEAD, which every process started from the head inherits (Ray's agents aside)."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    marker = secrets.token_hex(8)
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    # The job's `gantry` entrypoint is found on the PATH the head was started with.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", GANTRY_TEST_HEAD=marker)
    temp = Path(tempfile.mkdtemp(prefix="gray", dir="/tmp"))
    head = RayNode(temp, env, num_cpus=2, dashboard=True)
    address = f"http://127.0.0.1:{head.dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.proc.poll() is None, f"ray head exited {head.proc.returncode}; see {head.log}"
            assert time.monotonic() < deadline, f"Jobs API not up after 120 s; see {head.log}"
            try:
                jobs_api(address, "")
                break
            except OSError:
                time.sleep(0.5)
        yield address
    finally:
        # Ray's agents get an environment of their own (no marker): they are found as the
        # head's descendants, listed before it stops.
        tree = head.stop()
        marked = in_environ("GANTRY_TEST_HEAD", marker)
        left = survivors(lambda p: p in tree or marked(p), within=20)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        assert not left, "processes the Ray head started outlived it:\n" + "\n".join(left)


@pytest.mark.slow
def test_submit_follow_trains_to_completion_and_tracks(ray_head, mlflow_server, tmp_path):
    r = gantry("submit", "configs/toy-ring.yaml", *SMALL, "tracking.enabled=true",
               "tracking.experiment=submitted", f"train.out_dir={tmp_path}", "--address", ray_head, "--follow",
               env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    job_id = out.split("submitted job ", 1)[1].split()[0]
    first = r.stdout.splitlines()[0]  # names what was passed, never a value
    assert "MLFLOW_TRACKING_URI" in first and mlflow_server.uri not in first
    assert os.environ["RAY_AUTH_TOKEN"] not in out
    assert f"job {job_id}: SUCCEEDED" in out
    # the job's console, streamed: gantry's lines only, ending with the run's summary
    streamed = r.stdout.splitlines()[1:-1]
    assert streamed and all(ln.startswith("gantry: ") for ln in streamed), streamed
    assert streamed[-1].startswith("gantry: finished toy-ring"), streamed

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("submitted")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["kimg"] >= 4 and "modes_covered" in run.data.metrics

    listed = gantry("jobs", "list", "--address", ray_head)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "gantry train configs/toy-ring.yaml" in row


@pytest.mark.slow
def test_failing_job_exits_1_and_a_running_one_can_be_stopped(ray_head, tmp_path):
    # A config that validates here but fails there: the shard folder does not exist.
    bad = gantry("submit", "configs/mnist-dcgan.yaml", "data.path=/nonexistent/shards", "tracking.enabled=false",
                 "--address", ray_head, "--follow")
    assert bad.returncode == 1 and "FAILED" in bad.stdout, bad.stdout[-2000:] + bad.stderr[-2000:]

    long = gantry("submit", "configs/toy-ring.yaml", "train.kimg=100000", "tracking.enabled=false",
                  f"train.out_dir={tmp_path}", "--address", ray_head)
    assert long.returncode == 0, long.stderr
    job_id = long.stdout.split("submitted job ", 1)[1].split()[0]
    # Stopped at once: Ray acts on it while the job is PENDING or just starting, the moment
    # that used to leave the job's `gantry train` running, orphaned (see launch/submit.py).
    stop = gantry("jobs", "stop", job_id, "--address", ray_head)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    assert f"job {job_id}: STOPPED" in stop.stdout, stop.stdout  # it waited until the job ended
    deadline = time.monotonic() + 60
    while (status := jobs_api(ray_head, job_id)["status"]) != "STOPPED":
        assert time.monotonic() < deadline and status in ("PENDING", "RUNNING"), status
        time.sleep(0.5)
    # STOPPED means every process the job started has ended: its command line names tmp_path.
    left = survivors(in_cmdline(str(tmp_path)), within=10)
    assert not left, "processes of the stopped job survive:\n" + "\n".join(left)


def test_signalling_the_pid_ray_started_ends_the_whole_job(tmp_path):
    """Ray 2.60's job supervisor runs the entrypoint with `sh -c` in a session of its own and
    stops it by signalling the PIDs it lists at that moment, the entrypoint's and its children's
    (SIGTERM, SIGKILL after a grace), never the process group; its watcher that would kill the
    group dies with the supervisor. A stop acted on as the job starts can list the started PID
    alone, before anything was forked: signalling that PID alone must end every process of the
    job. (A shell that forked `gantry train` died of the SIGTERM and left it training, orphaned.)"""
    from launch.submit import entrypoint

    command = entrypoint("configs/toy-ring.yaml", ["train.kimg=100000", "tracking.enabled=false",
                                                   f"train.out_dir={tmp_path}"], None)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.Popen(command, shell=True, start_new_session=True, cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # a shell would have forked by now
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()  # Ray's SIGKILL after its grace, to the same PID
            proc.wait()
    finally:
        left = survivors(in_cmdline(str(tmp_path)), within=5)
    assert not left, "processes of the job outlived the PID Ray signals:\n" + "\n".join(left)


@pytest.mark.slow
def test_sigterm_ends_the_job_entrypoint_cleanly(mlflow_server, tmp_path):
    """What `gantry jobs stop` does to a running job, without Ray's timing: the job's entrypoint
    run as Ray's job supervisor runs it (`sh -c`, a session of its own), SIGTERM to the PID that
    was started. Training stops promptly, its MLflow run closes as KILLED, the command exits 143
    and no process of it remains."""
    from launch.submit import entrypoint

    command = entrypoint("configs/toy-ring.yaml", ["train.kimg=100000", "tracking.enabled=true",
                                                   "tracking.experiment=sigterm", f"train.out_dir={tmp_path}"], None)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=mlflow_server.uri, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, shell=True, start_new_session=True, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("gantry: toy-ring: ") and "MLflow" in line for line in lines):  # built, tracking started
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # training steps
        os.kill(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        rc = proc.wait(30)
        took = time.monotonic() - sent
    finally:
        left = survivors(in_cmdline(str(tmp_path)), within=5)
    reader.join(5)
    out = "".join(lines)
    assert rc == 143 and "gantry: terminated (SIGTERM)" in out, f"rc {rc}\n{out[-3000:]}"
    assert took < 15, f"{took:.1f} s from SIGTERM to exit"  # Ray's grace is 30 s (STOP_GRACE_S)
    assert not left, "processes of the terminated entrypoint survive:\n" + "\n".join(left)
    client = MlflowClient(mlflow_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_a_client_without_the_token_gets_one_line(ray_head):
    r = gantry("jobs", "list", "--address", ray_head, env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "wants a token" in r.stderr, r.stderr


def test_unreachable_cluster_is_one_line_and_exit_1():
    r = gantry("submit", "configs/toy-ring.yaml", "--address", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "cannot reach the Ray Jobs API" in r.stderr, r.stderr


def test_bad_config_exits_2_before_contacting_the_cluster():
    r = gantry("submit", "configs/toy-ring.yaml", "train.kimgg=3", "--address", "http://127.0.0.1:1")
    assert r.returncode == 2 and "unknown key 'train.kimgg'" in r.stderr, r.stderr

"""What the Ray tests share: a small real-MNIST shard set, the `gantry train` command line,
checkpoint readers (a path or a URL), Ray nodes started by a test, and finding the processes
a test must not leave behind."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from servers import free_ports

REPO = Path(__file__).resolve().parents[2]
BATCH = 32  # global: 16 per worker, so each rank's 512 samples are 32 full batches an epoch


PER_EPOCH = 512 // (BATCH // 2)  # batches per rank per epoch at 2 workers: 32
RESTARTED = "worker group restarted; resuming from"


def build_mnist(out) -> str:
    """1024 real MNIST digits padded to 32x32, in 8 shards of 128 (4 per rank at 2 workers), at
    a path or a URL."""
    from pipeline.shards import build_shards

    build_shards("mnist", out, 32, shard_size=128, pad=True, limit=1024, workers=1)
    return out


def train_cmd(shards, out_dir, kimg: float, checkpoint_kimg: float, *extra: str, verbose: bool = True) -> list[str]:
    """`verbose`: all of Ray's and gloo's output on the console, where tests look for aborts."""
    return [sys.executable, "-m", "launch.cli", "train", str(REPO / "configs" / "mnist-dcgan.yaml"),
            f"data.path={shards}", f"train.out_dir={out_dir}", f"train.kimg={kimg}", f"train.batch={BATCH}",
            f"train.checkpoint_kimg={checkpoint_kimg}", "train.eval_kimg=1000", "train.log_every=8",
            "eval.metrics=[]",  # sample grids only: scoring them would train a classifier per run
            "train.precision=fp32", "tracking.enabled=false", *extra] + (["--verbose"] if verbose else [])


def final_state(run_dir) -> tuple[dict, dict]:
    """(meta, state) of the newest checkpoint of a run (a path or a URL)."""
    from pipeline import checkpoint, storage

    latest = checkpoint.latest_checkpoint(storage.join(str(run_dir), "checkpoints"))
    assert latest is not None, f"no checkpoint under {run_dir}"
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(latest, "state.pt"))), weights_only=True)
    return checkpoint.read_meta(latest), state


def held_checkpoint(run_dir) -> str | None:
    """The name of the run's newest committed checkpoint (what a restarted group resumes from)."""
    from pipeline import checkpoint, storage

    latest = checkpoint.latest_checkpoint(storage.join(str(run_dir), "checkpoints"))
    return storage.basename(latest) if latest else None


def check_resumed_and_finished(run_dir, out: str, kimg: float, killed_after: str) -> int:
    """The run restarted from a checkpoint taken mid-run, not from zero, and ended where it was
    configured to. Returns the number of steps."""
    assert "terminate called" not in out
    assert RESTARTED in out, out[-3000:]
    resumed = [float(k) for k in re.findall(r"resumed from \S+ at kimg ([\d.]+)", out)]
    assert resumed and all(0 < k < kimg for k in resumed), resumed
    assert round(resumed[0] * 1000 / BATCH) >= int(killed_after[5:])
    meta, _ = final_state(run_dir)
    steps = round(kimg * 1000 / BATCH)
    assert meta["step"] == steps
    return steps


def check_data_position(run_dir, steps: int) -> None:
    """Every rank went on from its saved stream position: after `steps` batches in all, each rank
    sits where an uninterrupted stream would; a restart from an epoch start would not."""
    _, state = final_state(run_dir)
    want = (((steps - 1) // PER_EPOCH), (steps - 1) % PER_EPOCH + 1)
    assert [(d["epoch"], d["batches"]) for d in state["data"]] == [want, want]


def worker_pid(log: str, rank: int) -> int | None:
    """The pid of the Ray Train worker of `rank`, from the line Ray prints when it starts a group
    (the first group's, when a restart printed more)."""
    import re

    found = re.search(rf"pid=(\d+)\) world_rank={rank}\b", log)
    return int(found.group(1)) if found else None


def loader_worker_pid(pid: int) -> int | None:
    """A DataLoader worker of the process `pid`: a child forked from it (same command line)."""
    try:
        parent = psutil.Process(pid)
        forks = [c.pid for c in parent.children() if c.cmdline() == parent.cmdline()]
    except psutil.Error:  # one of them exited while we looked
        return None
    return forks[0] if forks else None


def stop_tree(proc) -> None:
    """SIGKILL a driver started by a test and every process under it (Ray's included), by pid."""
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


def matching(pred) -> list[psutil.Process]:
    """Live processes (zombies are dead) other than this one for which `pred(process)` holds;
    processes that vanish or cannot be read while we look are skipped."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE and pred(p):
                found.append(p)
        except psutil.Error:
            pass
    return found


def in_cmdline(marker: str):
    return lambda p: any(marker in word for word in p.cmdline())


def in_environ(name: str, value: str):
    return lambda p: p.environ().get(name) == value


def survivors(pred, within: float) -> list[str]:
    """Wait up to `within` seconds for every process `pred` selects to end. Whatever is still
    there is SIGKILLed (a test never leaves it behind) and described: pid, ppid, %cpu, command."""
    deadline = time.monotonic() + within
    while (left := matching(pred)) and time.monotonic() < deadline:
        time.sleep(0.25)
    described = []
    for p in left:
        try:
            described.append(f"pid {p.pid} ppid {p.ppid()} {p.status()} cpu {p.cpu_percent(0.2):.0f}% "
                             f"{' '.join(p.cmdline())[:300]}")
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    return described


class RayNode:
    """`ray start --block`, a head or a node joining `join` (the head's GCS address), in its own
    process group so that it is stopped by PID, never by `ray stop` (which would end every Ray
    on the machine). Every port with a fixed default gets a free one, all different: other Ray
    clusters share this machine. `dashboard`: a head serving its dashboard (and the Jobs API) on
    127.0.0.1:`dashboard_port`. `temp` is Ray's temp dir for this node (its socket paths must
    stay under 108 bytes: keep it short); `cwd` and `env` are the node's, and so its workers'.
    `ip`: a loopback address; nodes of one cluster take different ones (127.0.0.2, 127.0.0.3),
    since Ray rewrites 127.0.0.1 in an address to the host's outward IP, where nothing listens."""

    def __init__(self, temp: Path, env: dict, cwd: Path | None = None, join: str | None = None,
                 num_cpus: int = 1, dashboard: bool = False, ip: str = "127.0.0.1"):
        temp.mkdir(parents=True, exist_ok=True)
        ports = iter(free_ports(7))
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--num-cpus={num_cpus}",
               "--object-store-memory=300000000", f"--node-ip-address={ip}", f"--temp-dir={temp}",
               "--disable-usage-stats",
               *(f"--{flag}={next(ports)}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "runtime-env-agent-port", "metrics-export-port"))]
        if join is None:
            port = next(ports)
            self.address = f"{ip}:{port}"
            cmd += ["--head", f"--port={port}", f"--ray-client-server-port={next(ports)}"]
            self.dashboard_port = next(ports) if dashboard else None
            cmd += ([f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                     "--include-dashboard=true"] if dashboard else ["--include-dashboard=false"])
        else:
            self.address = join
            cmd += [f"--address={join}"]
        self.log = temp / "node.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _exited(self) -> str:
        tail = self.log.read_text(errors="replace")[-2000:]
        return f"ray start exited {self.proc.returncode}; the end of {self.log}:\n{tail}"

    def wait_listening(self, timeout: float = 120) -> None:
        """Until the head's GCS takes connections."""
        import socket

        host, port = self.address.split(":")
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self._exited()
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"Ray head not up after {timeout} s; see {self.log}"
                time.sleep(0.3)

    def wait_started(self, timeout: float = 120) -> None:
        """Until `ray start` has started the node and registered it (then it only blocks)."""
        deadline = time.monotonic() + timeout
        while "block forever" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self._exited()
            assert time.monotonic() < deadline, f"Ray node not up after {timeout} s; see {self.log}"
            time.sleep(0.3)

    def owns(self, pid: int) -> bool:
        """Whether process `pid` was started by this node (it descends from its `ray start`)."""
        try:
            return self.proc.pid in {p.pid for p in psutil.Process(pid).parents()}
        except psutil.NoSuchProcess:
            return False

    def stop(self) -> set[psutil.Process]:
        """SIGTERM the node's process group (SIGKILL after 5 s; a graceful drain may take 30 s
        and nothing here needs it). Returns what it had started, for a survivors check: Ray's
        workers (process groups of their own) exit within seconds once the raylet has gone."""
        try:
            tree = set(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            tree = set()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except ProcessLookupError:  # `ray start` failed and its group is gone; its children are in `tree`
            self.proc.wait()
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return tree

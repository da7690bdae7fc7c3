"""The embedded Ray cluster stays out of the trainer's way (launch/embedded_ray.py): its
processes and threads run idle-class where the OS lets a trainer leave that class again and
the machine is not busy already, a
training thread (and what it starts) and the driver's main thread run normally, and Ray Train starts none of the actors an embedded run has no use
for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from launch import embedded_ray

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, threading, psutil, ray
from launch import embedded_ray

def classes(pid=None):
    tids = os.listdir(f"/proc/{pid or 'self'}/task")
    return sorted({os.sched_getscheduler(int(t)) for t in tids})

def nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

def started_class():  # (class, nice) of a thread this thread starts, as torch starts its OpenMP threads
    seen = []
    t = threading.Thread(target=lambda: seen.append([os.sched_getscheduler(0), nice()]))
    t.start(), t.join()
    return seen[0]

idle = embedded_ray.start(num_cpus=1)

@ray.remote(num_cpus=0)
def worker(foreground):
    if foreground:
        embedded_ray.foreground()
    return os.getpid(), [os.sched_getscheduler(0), nice()], started_class(), classes()

started = {p.pid: p.name() for p in psutil.Process().children(recursive=True)}
as_started, as_trainer = ray.get(worker.remote(False)), ray.get(worker.remote(True))
out = {"idle": idle, "driver": [[os.sched_getscheduler(0), nice()], started_class(), classes()],
       "ray": {name: classes(pid) for pid, name in started.items() if psutil.pid_exists(pid)},
       "worker": as_started, "trainer": as_trainer}
ray.shutdown()
print(json.dumps(out))
"""


def test_ray_runs_idle_class_and_the_trainer_normally():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    (pid, *before), (same_pid, *after) = out["worker"], out["trainer"]
    assert pid == same_pid  # one worker process, before and after it called foreground()
    normal = [[os.SCHED_OTHER, os.nice(0)]] * 2  # this test's nice level is the driver's
    assert out["driver"][:2] == normal, "the driver's main thread, and what it starts, run normally"
    assert {"raylet", "gcs_server"} <= set(out["ray"]), out["ray"]
    ray_nice = before[0][1]
    assert ray_nice > os.nice(0), "Ray starts workers niced (worker_niceness)"
    # nothing but this test runs: the machine is not busy, so only the OS can rule idle-class out
    assert out["idle"] == embedded_ray._can_leave_idle()
    if out["idle"]:
        assert after[:2] == normal, "a training thread, and what it starts, run normally, at the driver's nice"
        assert all(c == [os.SCHED_IDLE] for c in out["ray"].values()), out["ray"]
        assert before == [[os.SCHED_IDLE, ray_nice], [os.SCHED_IDLE, ray_nice], [os.SCHED_IDLE]]
        # Ray's own threads in the worker and the driver stay idle-class
        assert os.SCHED_IDLE in after[2] and os.SCHED_IDLE in out["driver"][2]
    else:  # no way back from idle-class here: nothing is made idle-class, nor less nice
        assert after[:2] == before[:2] == [[os.SCHED_OTHER, ray_nice]] * 2
        assert all(c == [os.SCHED_OTHER] for c in out["ray"].values()), out["ray"]
        assert after[2] == out["driver"][2] == [os.SCHED_OTHER]


def test_ray_is_not_made_idle_class_on_a_busy_machine():
    """Idle-class Ray could not start beside a busy loop on each core (its raylet timed out)."""
    cores = os.cpu_count() or 1
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert embedded_ray.cores_free() < embedded_ray.MIN_FREE_CORES
        with embedded_ray._new_processes_idle() as idle:
            assert not idle and os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert embedded_ray.cores_free() >= embedded_ray.MIN_FREE_CORES  # and the same machine, quiet, is not


def test_lean_trainer_drops_only_the_actors_an_embedded_run_does_not_use():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    def names(cls):
        trainer = cls(lambda: None, scaling_config=ScalingConfig(num_workers=1))
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    full, lean = names(TorchTrainer), names(embedded_ray.trainer_class())
    dropped = {"DatasetsCallback", "PlacementGroupCleanerCallback"}
    assert dropped <= set(full), f"Ray Train's default callbacks changed: {full}"
    assert lean == [n for n in full if n not in dropped]


ACTORS = r"""
import json, psutil, ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from launch import embedded_ray

def train_fn(config):
    names = sorted({" ".join(p.cmdline())[:60] for p in psutil.process_iter() if p.name().startswith("ray::")})
    with open(config["to"], "w") as f:
        json.dump(names, f)

embedded_ray.start(num_cpus=1)
out = {}
for cls in (embedded_ray.trainer_class(), TorchTrainer):  # lean first: the coordinator outlives a run
    to = f"STORAGE/{cls.__name__}.json"
    cls(train_fn, train_loop_config={"to": to}, scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(storage_path="STORAGE", name=cls.__name__)).fit()
    out[cls.__name__] = json.load(open(to))
embedded_ray.stop()
print(json.dumps(out))
"""


def test_lean_trainer_runs_without_the_autoscaling_coordinator(tmp_path):
    r = subprocess.run([sys.executable, "-c", ACTORS.replace("STORAGE", str(tmp_path))], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    coordinator = "ray::_AutoscalingCoordinatorActor"
    assert not any(n.startswith(coordinator) for n in out["LeanTorchTrainer"]), out
    assert any(n.startswith(coordinator) for n in out["TorchTrainer"]), out  # what stock Ray Train starts


OUTLIVER = r"""
import json, os, time, psutil, ray
from launch import embedded_ray

embedded_ray.start(num_cpus=1)

@ray.remote(num_cpus=0)
class Stuck:  # leaves a process of the cluster that does not exit with it, as a hung worker does
    def start(self):
        if os.fork() == 0:
            os.setsid()
            time.sleep(600)
            os._exit(0)
        return os.getpid()

actor = Stuck.remote()
ray.get(actor.start.remote())
cluster = [p.pid for p in psutil.Process().children(recursive=True)]
embedded_ray.stop()
print(json.dumps({"cluster": cluster, "alive": [p for p in cluster if psutil.pid_exists(p)
                                                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]}))
"""


def test_stop_leaves_no_process_of_the_cluster_behind():
    # Ray kills its workers' children itself unless told not to: the forked one then stays behind
    # as a hung Ray worker does, where only stop() can end it.
    r = subprocess.run([sys.executable, "-c", OUTLIVER], cwd=REPO, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(REPO), "RAY_kill_child_processes_on_worker_exit": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["cluster"]) >= 4  # raylet, GCS, the actor, its child, ...
    assert out["alive"] == []

"""The Ray cluster gantry starts on this machine when no address is given, and why it is lean.

Why a Ray worker trained ~8 % slower than the local launcher here (2 cores, DCGAN-64): not
its threads (`ray_train._threads_here` overrides the OMP_NUM_THREADS=1 Ray sets), nor its
allocator or environment. Measured by stopping processes mid-run (SIGSTOP/SIGCONT every 14 s,
windows paired in time): with every other Ray process stopped the same worker ran 25 % faster;
stopping only Ray Train's helper actors gave 13 %, only the daemons (raylet, GCS, agents, log
monitor) 10 %, only the driver nothing. Every Ray worker process wakes its main thread every
10 ms (the core worker's signal check, fixed in Ray's C++), and each daemon polls on its own
timers: ~1 % of a core per process, and each wake-up preempts one of the step's two OpenMP
threads while the other waits at the next barrier, so the step loses about twice that.

So an embedded cluster
  - starts fewer processes: no prestarted idle workers, no Ray Data dataset manager (gantry
    streams shards itself), no placement-group cleaner (the cluster dies with the driver) and
    no autoscaling coordinator (one node, no autoscaler), no task events or metrics for a
    dashboard it does not run, no preemption watcher;
  - runs what is left at SCHED_IDLE, where the OS allows it to raise the trainer back:
    processes the driver starts inherit its scheduling class, so Ray is started from an
    idle-class thread, and `foreground()` puts each training thread (and the driver's main
    thread) back to normal, at the nice level Ray gives workers; Ray's threads in those
    processes stay idle. Ray's wake-ups then wait for a free core instead of preempting a
    training thread; they still run whenever the trainer waits (data, collectives,
    checkpoints), and on a saturated core they get a small share, not none, so Ray's own
    health checks keep passing.
Not on a machine that is busy already: idle-class processes get ~0.3 % of a core that other
processes keep saturated, and Ray, which needs a few CPU-seconds to start its daemons and
workers, then times out starting (seen here with a busy loop on each core). So Ray runs
idle-class only where at least half a core is free when it starts; otherwise it runs as
stock Ray does.
A cluster gantry joins (an address) is left as its operator configured it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

from pipeline.errors import GantryError

# Read by Ray Train's controller in the driver, which hands them to its workers.
TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
# The raylet's polling periods from 100-250 ms to 1 s (resource reports, GC and memory checks,
# idle-worker reaping, object-manager timer, disk monitor) and no event-loop stats: on one node
# nothing waits on them. With these and no autoscaling coordinator, Ray's processes other than
# the trainer used 2.7 % of a core during a Ray x1 DCGAN run (raylet 0.27 %, 4 wake-ups/s),
# against 3.2 % (raylet 0.47 %, 22/s); start-up to the first step did not grow (14.8 s).
SYSTEM_CONFIG = {"task_events_report_interval_ms": 0, "enable_metrics_collection": False,
                 "prestart_worker_first_driver": False, "enable_worker_prestart": False,
                 "raylet_report_resources_period_milliseconds": 1000, "raylet_check_gc_period_milliseconds": 1000,
                 "memory_monitor_refresh_ms": 1000, "kill_idle_workers_interval_ms": 1000,
                 "object_manager_timer_freq_ms": 1000, "local_fs_monitor_interval_ms": 1000,
                 "event_stats": False, "debug_dump_period_milliseconds": 0}


# The driver's nice level, which Ray's workers inherit through the raylet's environment.
NICE_ENV = "GANTRY_DRIVER_NICE"


# Below this many idle cores when Ray starts, its processes are not made idle-class.
MIN_FREE_CORES = 0.5


def start(num_cpus: int) -> bool:
    """Start the cluster; True when its processes run idle-class."""
    import ray

    os.environ[NICE_ENV] = str(os.getpriority(os.PRIO_PROCESS, 0))
    with _new_processes_idle() as idle:
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=512 * 2**20,
                     _system_config=SYSTEM_CONFIG)
        except Exception as e:  # e.g. its raylet or GCS not up in time on an overloaded machine
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            raise GantryError(f"the embedded Ray cluster did not start: "
                              f"{lines[0] if lines else type(e).__name__}") from None
    return idle


def stop() -> None:
    """ray.shutdown(), then kill whatever of the cluster outlives it.

    A Ray worker can hang in its C++ exit handler after the raylet is gone, and stays behind under
    init for good. Seen here in 2 of about 20 runs: a TrainController deadlocked in
    CoreWorkerProcessImpl's destructor, where a pubsub reply posts to the io_context being torn
    down."""
    import psutil
    import ray

    ours = psutil.Process().children(recursive=True)
    ray.shutdown()
    stuck = psutil.wait_procs(ours, timeout=10)[1]
    for p in stuck:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(stuck, timeout=5)


def trainer_class():
    """TorchTrainer without the callbacks and the autoscaling coordinator whose actors an
    embedded run has no use for: its one node is all there is, so asking an autoscaler for
    resources asks nobody (and that actor is one more process waking 100 times a second)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    class FixedWithoutAutoscaler(FixedScalingPolicy):
        def after_controller_start(self, train_run_context):
            pass  # where the stock policy starts the coordinator actor and registers with it

        def _maybe_send_resource_request(self):
            pass

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, (DatasetsCallback, PlacementGroupCleanerCallback))]

        def _initialize_and_run_controller(self, **kwargs):
            if type(kwargs["scaling_policy"]) is FixedScalingPolicy:  # an elastic one needs the coordinator
                kwargs["scaling_policy"] = FixedWithoutAutoscaler(self.scaling_config)
            return super()._initialize_and_run_controller(**kwargs)

    return LeanTorchTrainer


def foreground() -> None:
    """The calling thread back to the normal class, at the driver's nice level, if `start` made
    it idle-class; the threads and processes it starts from then on inherit both (a thread's
    class and nice level are its own).

    Only this thread: Ray's own threads in the same process (the core worker's event loops and
    gRPC pollers, and a worker's main thread with its 10 ms signal check) stay idle-class like
    the rest of Ray. Flipping just those threads between idle and normal every 30 s during one
    Ray x1 run (DCGAN-64, windows paired in time): 111.1 img/s idle, 104.3 normal.

    The nice level: Ray starts workers at nice 15 so that its daemons win the CPU from them;
    here the daemons are idle-class already, and a trainer at nice 15 (weight 36 against 1024)
    also yields its core to every nice-0 wake-up of the machine (kernel threads, a container's
    agent), while its other OpenMP thread waits at the next barrier. Ray x1 over local, the two
    taking 8-s turns (an early version of `paired` in tests/bench/train_throughput.py, ratio of
    medians): 0.951, 0.960, 0.964 at nice 15; 0.980, 0.967, 1.003 at nice 0."""
    if os.sched_getscheduler(0) == os.SCHED_IDLE:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        with contextlib.suppress(PermissionError):  # a RLIMIT_NICE may allow the class, not the level
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(os.environ.get(NICE_ENV, "0")))


@contextlib.contextmanager
def _new_processes_idle():
    if not _can_leave_idle() or cores_free() < MIN_FREE_CORES:
        yield False
        return
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield True
    finally:
        foreground()  # ray.init's threads in the driver stay idle-class, as in a worker


def _can_leave_idle() -> bool:
    """Leaving SCHED_IDLE needs CAP_SYS_NICE or a RLIMIT_NICE that allows it (a container
    usually has neither): tried on a throwaway thread, never on one that matters."""
    if not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self/task"):
        return False
    ok = []

    def probe():
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return bool(ok)


def cores_free(sample_s: float = 0.25) -> float:
    """How many of this machine's cores were idle over the next `sample_s` (from /proc/stat)."""
    def times():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return fields[3] + fields[4], sum(fields)

    idle0, total0 = times()
    time.sleep(sample_s)
    idle1, total1 = times()
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(total1 - total0, 1)

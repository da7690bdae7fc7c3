"""The Ray launcher: N training workers under Ray Train's `TorchTrainer`.

The driver (this process)
  - joins a Ray cluster (`address`, else RAY_ADDRESS) or starts an embedded one sized to this
    machine, lean and idle-class so that it does not slow the trainer (launch/embedded_ray.py);
  - refuses a local run dir or data path on a cluster of several nodes: no node reads another's
    disk, so they must be on an object store (s3://, gs://; data also http(s)://);
  - hands every worker the manifest location, seed and world size: each rank computes its share
    of every epoch's shard plan (`plan_shards`, a pure function of those), so the Ray and the
    local launcher read the same data in the same order;
  - runs `TorchTrainer` with a process group (gloo on CPU, NCCL on GPU) whose collectives fail
    after COLLECTIVE_TIMEOUT_S, `FailureConfig` (a dead worker restarts the whole group, up to
    `max_failures` times), and Ray Train's own storage in `<run dir>/ray` (on the object store
    when the run dir is there).

Each worker calls `pipeline.worker.train_worker`. Checkpoints live in the run dir, which every
rank of every node reads; after each save every rank reports its metrics to Ray. A restarted
group resumes from the newest checkpoint this launch wrote there (weights, optimizer state,
step, RNG and every rank's data position), else from where the launch started.
"""
from __future__ import annotations

import os
import signal
import time

from launch import embedded_ray
from pipeline.config import RunConfig
from pipeline.errors import GantryError

MAX_FAILURES = 3


def _worker_loop(config: dict) -> None:
    """Runs in each Ray Train worker, in its node's working directory."""
    import ray.train
    import torch

    from pipeline import console
    from pipeline.config import from_dict
    from pipeline.errors import HealthStopped
    from pipeline.worker import train_worker

    embedded_ray.foreground()
    trial = config.get("trial")
    torch.set_num_threads(trial["threads"] if trial else _threads_here())
    if trial:
        console.speak_for(f"trial {trial['name']}")
    cfg = from_dict(config["cfg"], "<ray driver>")
    rank = ray.train.get_context().get_world_rank()
    resume = _saved_since(cfg, config["launched"]) or config["resume"]
    if resume != config["resume"] and rank == 0:
        console.say(f"worker group restarted; resuming from {resume}")
    try:
        train_worker(cfg, resume=resume, tracking_run_id=config["tracking_run_id"],
                     on_checkpoint=lambda path, info: ray.train.report({**info, "checkpoint": path}))
    except HealthStopped as e:
        if not trial:
            raise
        # A sweep counts a diverged trial; retrying it, as a failure would be, diverges again.
        console.say(str(e))
        ray.train.report({"outcome": "diverged"})


def _threads_here() -> int:
    """Torch's threads for this worker: its node's cores shared by the workers on that node.
    Ray sets OMP_NUM_THREADS to the worker's CPU request (1), which would leave all but one
    core idle; more threads than cores makes torch ~20x slower. The cores are as Ray counts
    them (a container's CPU limit, not the host's), on this node, not the driver's."""
    import ray
    import ray.train

    node = ray.get_runtime_context().get_node_id()
    cpus = next(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node)
    return max(1, int(cpus) // ray.train.get_context().get_local_world_size())


def _saved_since(cfg: RunConfig, launched: float) -> str | None:
    """The run dir's newest checkpoint if this launch wrote it (the group was restarted)."""
    from pipeline import checkpoint, storage
    from pipeline.worker import run_dir_for

    latest = checkpoint.latest_checkpoint(storage.join(run_dir_for(cfg), "checkpoints"))
    if latest is not None and checkpoint.read_meta(latest).get("time", 0) >= launched:
        return latest
    return None


def absolute(cfg: RunConfig, resume: str | None) -> tuple[RunConfig, str | None]:
    """Local paths made absolute here: workers keep their own node's working directory (Ray
    Train moves them into its session dir), so a relative SQLite tracking store, the default
    included, would be created there and not where `gantry history` looks."""
    from pipeline import storage
    from pipeline.tracking.store import resolve_uri

    def fix(location):
        return os.path.abspath(storage.local_path(location)) if location and storage.is_local(location) else location

    cfg = cfg.model_copy(deep=True)
    cfg.train.out_dir, cfg.data.path, cfg.eval.cache_dir = fix(cfg.train.out_dir), fix(cfg.data.path), fix(cfg.eval.cache_dir)
    uri = resolve_uri(cfg.tracking.uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    cfg.tracking.uri = uri
    return cfg, (resume if resume == "latest" else fix(resume))


def refuse_local_paths_on_a_cluster(cfg: RunConfig) -> None:
    """A config error (exit 2), found once the cluster's size is known, before any work."""
    import ray

    from pipeline.config import ConfigError

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    local = cfg.local_locations()
    if nodes >= 2 and local:
        key, location = local[0]
        raise ConfigError(f"{key} {location} is on this machine's disk, which the other {nodes - 1} nodes of the "
                          f"Ray cluster cannot read; use an object store (s3://…, gs://…)")


def ray_storage(run_dir: str):
    """(storage_path, storage_filesystem) for Ray Train's own state under the run dir. An
    object store goes through the same fsspec file system as the rest of gantry, so a custom
    endpoint (AWS_ENDPOINT_URL) and its credentials hold for Ray too."""
    from pipeline import storage

    location = storage.join(run_dir, "ray")
    if storage.is_local(location):
        return storage.local_path(location), None
    import pyarrow.fs

    fs, path = storage.filesystem(location)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


# Ray Train's print patch sends every print of a worker through the root logger as well, so
# each console line would reach the driver twice (stdout and stderr); gantry's lines are meant
# to be printed once (see launch/console.py).
RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def connect(address: str | None, workers: int) -> bool:
    """Join the cluster at `address` or start an embedded one; True when this call connected
    (and so must shut down)."""
    import ray

    if ray.is_initialized():
        return False
    for k, v in RAY_TRAIN_ENV.items() if address else {**RAY_TRAIN_ENV, **embedded_ray.TRAIN_ENV}.items():
        os.environ.setdefault(k, v)  # read by Ray Train's controller, which passes them to workers
    # ray.init replaces the driver's SIGTERM handler with sys.exit(15); gantry's own (see
    # launch/cli.py) stops training the way Ctrl-C does and exits 143, so it is put back.
    sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address)
    else:
        embedded_ray.start(num_cpus=max(os.cpu_count() or 1, workers))
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    return True


def disconnect(address: str | None) -> None:
    """Undo a `connect` that returned True."""
    import ray

    ray.shutdown() if address else embedded_ray.stop()


def run_ray(cfg: RunConfig, resume: str | None = None, address: str | None = None,
            max_failures: int = MAX_FAILURES, tracking_run_id: str | None = None,
            placement: str = "PACK", trial: dict | None = None, callbacks: tuple = ()) -> dict[str, float]:
    """Train `cfg` on `cfg.workers` Ray workers; return rank 0's last report (its eval).
    `trial`: {"name", "threads", "cpus"} when this run is a sweep's trial (launch/sweeps/trial.py),
    whose workers train with that many threads on that many of Ray's CPUs each;
    `callbacks`: Ray Train callbacks, which see every report (metrics and the gantry checkpoint)."""
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline import checkpoint
    from pipeline.strategy import COLLECTIVE_TIMEOUT_S
    from pipeline.worker import run_dir_for

    cfg, resume = absolute(cfg, resume)
    cfg.strategy.kind = cfg.strategy.for_group(cfg.workers)
    if not cfg.is_toy:  # before Ray starts: a plan these shards cannot feed fails fast
        from pipeline.shards.manifest import load_manifest
        from pipeline.shards.plan import plan_shards
        plan_shards(load_manifest(cfg.data.path), 0, cfg.seed, cfg.workers)
    address = address or os.environ.get("RAY_ADDRESS")
    started = connect(address, cfg.workers)
    try:
        refuse_local_paths_on_a_cluster(cfg)
    except Exception:
        if started:
            disconnect(address)
        raise
    # The cluster's GPUs, not this process's: on KubeRay the driver runs on a CPU-only head pod.
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    storage_path, storage_filesystem = ray_storage(run_dir_for(cfg))
    launched = time.time()
    trainer_class = embedded_ray.trainer_class() if started and not address else TorchTrainer
    trainer = trainer_class(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "resume": resume, "tracking_run_id": tracking_run_id,
                           "launched": launched, "trial": trial},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=gpu, placement_strategy=placement,
                                     resources_per_worker={"CPU": trial["cpus"] if trial else 1}),
        run_config=RayRunConfig(
            # One name per launch: a later launch resumes only when asked (--resume), while
            # restarts inside this launch resume from this launch's checkpoints.
            name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=max_failures), callbacks=list(callbacks),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise GantryError(f"training failed after {max_failures} restarts: {_root_cause(e)}") from None
    finally:
        if started:
            disconnect(address)
    # The run's last evaluation, as its final checkpoint recorded it (Ray Train keeps reported
    # metrics only with checkpoints, and gantry's checkpoints stay in the run dir).
    latest = _saved_since(cfg, launched)
    return dict(checkpoint.read_meta(latest).get("eval") or {}) if latest else {}


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__

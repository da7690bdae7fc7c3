"""`gantry train --workers 2` end to end under Ray Train, for each distributed strategy: real
Ray, real gloo, real MNIST shards planned by the driver; exit 0, no abort at exit, and a console
a person can read. The same run started by torchrun and by `accelerate launch` instead ends with
the same weights as Ray's."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ray_helpers import BATCH, REPO, build_mnist, final_state, train_cmd
from servers import free_port

KIMG = 0.512  # 16 steps


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    return build_mnist(tmp_path_factory.mktemp("mnist") / "shards")


# What Ray, MLflow and DeepSpeed print that a person at the console has no use for.
NOISE = ["Token authentication", "core_worker.cc", "PreemptionWatcher", "Checkpoint successfully created",
         "Reporting training result", "INFO mlflow", "RayTrainWorker pid=", "TrainController pid=", "[INFO]",
         "Traceback", "terminate called"]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, mnist_shards):
    """`ray_run(strategy)`: (completed process, out dir, tracking URI) of one 2-worker Ray run
    with that strategy, run once per module."""
    done = {}

    def run(strategy):
        if strategy not in done:
            out = tmp_path_factory.mktemp(f"ray-{strategy}")
            uri = f"sqlite:///{out}/mlruns.db"  # tracking on: MLflow has its say at start-up
            cmd = train_cmd(mnist_shards, out, KIMG, 0.256, "--workers", "2", "--strategy", strategy,
                            "tracking.enabled=true", f"tracking.uri={uri}", verbose=False)
            done[strategy] = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600), out, uri
        return done[strategy]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_two_ray_workers_train_to_the_end(ray_run, strategy):
    r, tmp_path, uri = ray_run(strategy)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # The console: gantry's lines only, the start line once, progress, saves, the summary.
    console = r.stdout.splitlines() + r.stderr.splitlines()
    assert all(ln.startswith("gantry: ") for ln in console), console
    assert not [ln for ln in console if any(noise in ln for noise in NOISE)], console
    assert sum("2 workers" in ln and uri in ln for ln in console) == 1, console
    assert any(ln.startswith("gantry: progress kimg ") and "img/s" in ln for ln in console), console
    assert [ln for ln in console if ln.startswith("gantry: saved ")] == [
        "gantry: saved ckpt-000000008 at kimg 0.26", "gantry: saved ckpt-000000016 at kimg 0.51"]
    run_dir = tmp_path / "mnist-dcgan"
    [log] = (run_dir / "logs").iterdir()
    assert re.fullmatch(rf"gantry: finished mnist-dcgan in \S+ at kimg 0.51(: .*)?; run dir {run_dir}; log {log}",
                        console[-1]), console[-1]
    # The rest went to the log: Ray's and MLflow's lines, and no abort or traceback of ours.
    # (Ray's PlacementGroupCleaner actor queries the state API, which an embedded Ray without
    # dashboard lacks: its traceback is Ray's noise.)
    logged = log.read_text()
    assert "Reporting training result" in logged and "mlflow" in logged
    assert "terminate called" not in logged
    ours = [ln for ln in logged.splitlines() if "PlacementGroupCleaner" not in ln]
    assert not any("Traceback" in ln for ln in ours), logged[-3000:]

    meta, state = final_state(run_dir)
    steps = round(KIMG * 1000 / BATCH)
    assert meta["step"] == steps and meta["config"]["strategy"]["kind"] == strategy
    # every rank's stream position is in the checkpoint: 16 of its own batches in epoch 0
    assert [(d["geometry"]["rank"], d["epoch"], d["batches"]) for d in state["data"]] == [(0, 0, steps), (1, 0, steps)]
    # checkpoints stay in the run dir (Ray Train keeps no copies: a restarted group reads the run dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"ckpt-{steps // 2:09d}", f"ckpt-{steps:09d}"]
    assert not list(run_dir.glob("ray/**/ckpt-*"))
    assert (run_dir / "samples" / f"grid-{steps:09d}.png").is_file()


def _weights(run_dir: Path, checkpoint: str = f"ckpt-{round(KIMG * 1000 / BATCH):09d}") -> dict:
    """G, D and G_ema of one of the run's checkpoints (by default its last)."""
    return {f"{net}.{k}": v for net in ("G", "D", "G_ema")
            for k, v in load_file(run_dir / "checkpoints" / checkpoint / f"{net}.safetensors").items()}


@pytest.mark.slow
def test_torchrun_and_accelerate_launch_train_like_ray(ray_run, mnist_shards, tmp_path):
    """Same config, seed and shard plan, fp32: the env launcher's 2 processes end with Ray's weights."""
    r, ray_out, _ = ray_run("ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    ray_weights = _weights(ray_out / "mnist-dcgan")
    # A MULTI_GPU config is how `accelerate launch` starts 2 processes on one host (it runs
    # torchrun); `--cpu`/MULTI_CPU starts one unless mpirun is there. gantry's PartialState(cpu=…)
    # then makes it a gloo group (MULTI_CPU) on this GPU-less machine.
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                                 f"num_processes: 2\nmachine_rank: 0\nmain_process_port: {free_port()}\n"
                                 f"mixed_precision: 'no'\nuse_cpu: false\n")
    bin_dir = Path(sys.executable).parent
    launchers = {
        "torchrun": [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2"],
        "accelerate launch": [str(bin_dir / "accelerate"), "launch", "--config_file", str(accelerate_config)],
    }
    for name, launcher in launchers.items():
        out = tmp_path / name.split()[0]
        train = train_cmd(mnist_shards, out, KIMG, 0.256, verbose=False)[1:]  # after the python executable
        r = subprocess.run(launcher + train, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (name, r.stdout[-3000:] + r.stderr[-3000:])
        console = [ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if ln.startswith("gantry: ")]
        backend = "gloo (MULTI_CPU)" if name == "accelerate launch" else "gloo"
        assert f"gantry: joined {name}'s group: 2 processes, {backend}" in console, console
        assert sum("2 workers (ddp)" in ln for ln in console) == 1, console  # rank 0 speaks for the run
        assert sum(ln.startswith("gantry: finished mnist-dcgan") for ln in console) == 1, console
        logs = sorted(p.name for p in (out / "mnist-dcgan" / "logs").iterdir())
        assert len(logs) == 2 and sum(log.endswith("-rank1.log") for log in logs) == 1, logs  # each rank keeps its log
        weights = _weights(out / "mnist-dcgan")
        assert weights.keys() == ray_weights.keys()
        for k, v in ray_weights.items():
            assert (weights[k] - v).abs().max() <= 1e-5, (name, k)
    # and the steps between the two checkpoints moved the weights: equal runs, not idle ones
    mid = _weights(ray_out / "mnist-dcgan", "ckpt-000000008")
    assert max((ray_weights[k] - v).abs().max() for k, v in mid.items()) > 1e-3


def test_local_launcher_refuses_many_workers(tmp_path, mnist_shards):
    cmd = train_cmd(mnist_shards, tmp_path, KIMG, 0.256, "--workers", "2", "--strategy", "ddp",
                    "--launcher", "local")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "local launcher runs one worker" in r.stderr and "--launcher ray" in r.stderr

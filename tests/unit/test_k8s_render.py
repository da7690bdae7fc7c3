"""`gantry k8s render`: run config + overlay -> RayJob. Schema validation of the output is in
test_k8s_manifests.py; here, what the config and the options change and how mistakes fail."""
from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.k8s_render import check_locations, job_name, overlay_rayjob, render_rayjob
from pipeline.config import ConfigError, from_dict
from pipeline.errors import GantryError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def templates():
    return {o: overlay_rayjob(o) for o in ("cpu-dev", "gpu")}


# The job's pods share no disk: a renderable run keeps its run dir on an object store.
OUT = "train.out_dir=s3://bucket/runs"


def _cfg(**tree):
    tree.setdefault("train", {}).setdefault("out_dir", "s3://bucket/runs")
    return from_dict({"name": "mnist", "workers": 2, **tree})


def _workers(job):
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _images(job):
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    pods = [g["template"] for g in groups] + [job["spec"]["submitterPodTemplate"]]
    return [c["image"] for p in pods for c in p["spec"]["containers"]]


def test_entrypoint_and_worker_count_come_from_the_config(templates):
    job = render_rayjob(_cfg(workers=4, train={"batch": 64}), "configs/mnist.yaml", templates["gpu"])
    assert job["kind"] == "RayJob" and job["metadata"]["namespace"] == "gantry"
    assert job["metadata"]["name"] == "gantry-mnist"
    assert job["spec"]["entrypoint"] == "exec gantry train configs/mnist.yaml --workers 4 --launcher ray"
    group = _workers(job)
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 4, 4)
    assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict)


def test_resources_and_placement_come_from_the_overlay(templates):
    gpu = _workers(render_rayjob(_cfg(), "c.yaml", templates["gpu"]))["template"]["spec"]
    cpu = _workers(render_rayjob(_cfg(), "c.yaml", templates["cpu-dev"]))["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert cpu["containers"][0]["resources"] != gpu["containers"][0]["resources"]


def test_image_option_replaces_every_gantry_container(templates):
    plain = render_rayjob(_cfg(), "c.yaml", templates["gpu"])
    assert set(_images(plain)) == {"gantry:0.1.0-cuda"}
    job = render_rayjob(_cfg(), "c.yaml", templates["gpu"], image="reg.example/gantry@sha256:ab")
    assert set(_images(job)) == {"reg.example/gantry@sha256:ab"}
    assert len(_images(job)) == 3  # head, worker, submitter


def test_template_is_left_untouched(templates):
    before = copy.deepcopy(templates["cpu-dev"])
    render_rayjob(_cfg(workers=8, train={"batch": 64}), "c.yaml", templates["cpu-dev"], image="x:1")
    assert templates["cpu-dev"] == before


def test_config_path_is_shell_quoted(templates):
    job = render_rayjob(_cfg(), "configs/my run.yaml", templates["cpu-dev"])
    assert job["spec"]["entrypoint"] == "exec gantry train 'configs/my run.yaml' --workers 2 --launcher ray"


def test_job_names_are_valid_kubernetes_names():
    assert job_name("MNIST DCGAN v2") == "gantry-mnist-dcgan-v2"
    long = job_name("a" * 30 + "_" + "b" * 30)
    assert len(long) <= 47 and not long.endswith("-") and long.startswith("gantry-aaa")
    with pytest.raises(GantryError, match="no letters or digits"):
        job_name("___")


def test_empty_image_is_refused(templates):
    with pytest.raises(GantryError, match="--image"):
        render_rayjob(_cfg(), "c.yaml", templates["gpu"], image=" ")


# ---- the command as a user types it -------------------------------------------------------

def _write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_cli_writes_the_rayjob(tmp_path, capsys):
    cfg = _write(tmp_path, "name: ring\nworkers: 2\n")
    out = tmp_path / "job.yaml"
    assert main(["k8s", "render", cfg, OUT, "--overlay", "gpu", "--image", "r/g:7", "--out", str(out)]) == 0
    job = yaml.safe_load(out.read_text())
    assert job["spec"]["entrypoint"] == f"exec gantry train {cfg} {OUT} --workers 2 --launcher ray"
    assert _workers(job)["replicas"] == 2 and set(_images(job)) == {"r/g:7"}
    assert "wrote" in capsys.readouterr().err


def test_cli_prints_to_stdout_with_cpu_dev_by_default(tmp_path, capsys):
    cfg = _write(tmp_path, "name: ring\n")
    assert main(["k8s", "render", cfg, OUT]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert set(_images(job)) == {"gantry:0.1.0-cpu"}


def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    cfg = _write(tmp_path, "name: ring\nwrokers: 2\n")
    done = subprocess.run([sys.executable, "-m", "launch.cli", "k8s", "render", cfg],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "wrokers" in done.stderr


def test_cli_missing_config_exits_2(tmp_path, capsys):
    assert main(["k8s", "render", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_unwritable_out_exits_1(tmp_path, capsys):
    cfg = _write(tmp_path, "name: ring\n")
    assert main(["k8s", "render", cfg, OUT, "--out", str(tmp_path / "no" / "dir" / "job.yaml")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_unknown_overlay_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["k8s", "render", _write(tmp_path, "name: ring\n"), OUT, "--overlay", "tpu"])
    assert e.value.code == 2


# ---- overrides and locations: the pods share no disk --------------------------------------

def _image_cfg(**data):
    return _cfg(model={"arch": "dcgan"}, data={"source": "shards", **data})


def test_overrides_reach_the_entrypoint_quoted(templates):
    overrides = ["data.path=s3://bucket/mnist 32", "train.out_dir=s3://bucket/runs", "tracking.run_name=it's"]
    cfg = _image_cfg(path="s3://bucket/mnist 32")
    job = render_rayjob(cfg, "configs/mnist.yaml", templates["gpu"], overrides=overrides)
    words = shlex.split(job["spec"]["entrypoint"])
    assert words == ["exec", "gantry", "train", "configs/mnist.yaml", *overrides, "--workers", "2", "--launcher", "ray"]


def test_resume_reaches_the_entrypoint(templates):
    job = render_rayjob(_cfg(), "c.yaml", templates["cpu-dev"], resume="latest")
    assert shlex.split(job["spec"]["entrypoint"])[-6:] == ["--resume", "latest", "--workers", "2", "--launcher", "ray"]


def test_one_worker_trains_on_a_worker_pod_not_the_head(templates):
    # gantry train's default for one worker is the local launcher, i.e. the driver on the head pod.
    job = render_rayjob(_cfg(workers=1), "c.yaml", templates["gpu"])
    assert job["spec"]["entrypoint"].endswith("--workers 1 --launcher ray")
    assert _workers(job)["replicas"] == 1


@pytest.mark.parametrize("tree,key", [
    ({"train": {"out_dir": "runs"}}, "train.out_dir"),
    ({"train": {"out_dir": "file:///srv/runs"}}, "train.out_dir"),
    ({"model": {"arch": "dcgan"}, "data": {"source": "shards", "path": "data/mnist-32"}}, "data.path"),
    ({"eval": {"cache_dir": "/cache"}}, "eval.cache_dir"),
])
def test_local_locations_are_refused(tree, key):
    tree = {"name": "mnist", "workers": 2, **tree}
    tree.setdefault("train", {}).setdefault("out_dir", "s3://bucket/runs")
    cfg = from_dict(tree)
    with pytest.raises(ConfigError, match=rf"^{key} \S+ is a local path.*object-store URL"):
        check_locations(cfg)


def test_object_store_and_http_locations_pass():
    check_locations(_image_cfg(path="s3://bucket/mnist-32"))
    check_locations(_image_cfg(path="https://data.example/mnist-32"))
    check_locations(_cfg(train={"out_dir": "gs://bucket/runs"}, eval={"cache_dir": "s3://bucket/cache"}))
    # Toy data is generated in memory: there is no data.path to share.
    check_locations(_cfg(data={"source": "toy-ring", "path": "anything"}))


def test_local_resume_is_refused():
    with pytest.raises(ConfigError, match="--resume /ckpt is a local path"):
        check_locations(_cfg(), resume="/ckpt")
    check_locations(_cfg(), resume="s3://bucket/runs/mnist/checkpoints")


def test_credentials_in_an_override_are_refused_without_echo(templates):
    with pytest.raises(ConfigError, match="override tracking.uri: a URL with credentials") as e:
        render_rayjob(_cfg(), "c.yaml", templates["gpu"], overrides=["tracking.uri=http://u:hunter2@mlflow:5000"])
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match="override --resume: a URL with credentials") as e:
        render_rayjob(_cfg(), "c.yaml", templates["gpu"], resume="s3://key:hunter2@bucket/runs/ckpt-1")
    assert "hunter2" not in str(e.value)


def test_cli_passes_overrides_given_before_and_after_options(tmp_path, capsys):
    cfg = _write(tmp_path, "name: mnist\nworkers: 2\nmodel: {arch: dcgan}\ndata: {source: shards, path: data/m}\n")
    argv = ["k8s", "render", cfg, "data.path=s3://b/mnist-32", "--overlay", "gpu", OUT, "--resume", "latest"]
    assert main(argv) == 0
    words = shlex.split(yaml.safe_load(capsys.readouterr().out)["spec"]["entrypoint"])
    assert words == ["exec", "gantry", "train", cfg, "data.path=s3://b/mnist-32", OUT,
                     "--resume", "latest", "--workers", "2", "--launcher", "ray"]


def test_cli_bad_override_exits_2_naming_the_key(tmp_path, capsys):
    cfg = _write(tmp_path, "name: ring\n")
    assert main(["k8s", "render", cfg, OUT, "train.btach=64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.btach" in err
    assert main(["k8s", "render", cfg, OUT, "workers=0"]) == 2
    assert "workers" in capsys.readouterr().err


@pytest.mark.parametrize("config,args,key,value", [
    ("name: ring\n", [], "train.out_dir", "runs"),
    ("name: m\nmodel: {arch: dcgan}\ndata: {source: shards, path: data/mnist-32}\n", [OUT],
     "data.path", "data/mnist-32"),
])
def test_cli_local_paths_exit_2_and_write_nothing(tmp_path, capsys, config, args, key, value):
    out = tmp_path / "job.yaml"
    assert main(["k8s", "render", _write(tmp_path, config), *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.count("\n") == 1
    assert f"{key} {value} is a local path" in captured.err and "object-store URL" in captured.err

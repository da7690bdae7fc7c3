"""`gantry k8s render`: run config + overlay -> RayJob. Schema validation of the output is in
test_k8s_manifests.py; here, what the config and the options change and how mistakes fail."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.k8s_render import job_name, overlay_rayjob, render_rayjob
from pipeline.config import from_dict
from pipeline.errors import GantryError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def templates():
    return {o: overlay_rayjob(o) for o in ("cpu-dev", "gpu")}


def _cfg(**tree):
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
    assert job["spec"]["entrypoint"] == "exec gantry train configs/mnist.yaml --workers 4"
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
    assert job["spec"]["entrypoint"] == "exec gantry train 'configs/my run.yaml' --workers 2"


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
    assert main(["k8s", "render", cfg, "--overlay", "gpu", "--image", "r/g:7", "--out", str(out)]) == 0
    job = yaml.safe_load(out.read_text())
    assert job["spec"]["entrypoint"] == f"exec gantry train {cfg} --workers 2"
    assert _workers(job)["replicas"] == 2 and set(_images(job)) == {"r/g:7"}
    assert "wrote" in capsys.readouterr().err


def test_cli_prints_to_stdout_with_cpu_dev_by_default(tmp_path, capsys):
    cfg = _write(tmp_path, "name: ring\n")
    assert main(["k8s", "render", cfg]) == 0
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
    assert main(["k8s", "render", cfg, "--out", str(tmp_path / "no" / "dir" / "job.yaml")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_unknown_overlay_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["k8s", "render", _write(tmp_path, "name: ring\n"), "--overlay", "tpu"])
    assert e.value.code == 2

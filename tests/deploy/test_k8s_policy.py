"""checkov (policy checks, offline: --skip-download) on what the chart renders: k8s/ as applied, every
values file in charts/image-classifier/ci, and the predictor Deployment KServe makes of each
InferenceService (tests/deploy/kserve_pod.py: checkov does not look inside ServingRuntime containers, so
without this the model pods themselves would go unchecked). Any failing check fails the test; the
skips are in .checkov.yaml (global, each with its reason above it) or in a `checkov.io/skip`
annotation beside the one object it concerns.

checkov lives in its own virtualenv (.tools/checkov-venv from requirements-checkov.txt, made by
scripts/setup.sh, which `make test` runs first); a missing checkov fails, it never skips.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.deploy import k8s_render
from tests.deploy.kserve_pod import predictor_deployment

pytestmark = pytest.mark.integration  # checkov and helm

REPO = Path(__file__).resolve().parents[2]
CI_VALUES = REPO / "charts" / "image-classifier" / "ci"
VALUES_FILES = [None, *sorted(p.name for p in CI_VALUES.glob("*.yaml"))]
CONFIG = REPO / ".checkov.yaml"
CHECKOV = Path(os.environ.get("CHECKOV") or REPO / ".tools" / "checkov-venv" / "bin" / "checkov")
# Skipped for every object, each justified in .checkov.yaml: image digests, imagePullPolicy Always.
GLOBAL_SKIPS = {"CKV_K8S_43", "CKV_K8S_15"}


def rendered(values: str | None) -> list[dict]:
    args = ["-f", str(CI_VALUES / values)] if values else []
    objs = [obj for _, obj in k8s_render.split_documents(k8s_render.helm_template(*args))]
    return objs + [predictor_deployment(objs, o) for o in objs if o["kind"] == "InferenceService"]


def checkov(directory: Path, framework: str = "kubernetes") -> dict:
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(f"checkov not found at {CHECKOV}: run scripts/setup.sh (make test does)")
    proc = subprocess.run([str(CHECKOV), "--config-file", str(CONFIG), "--framework", framework,
                           "-d", str(directory), "--compact", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    # exit 1 = failed checks (reported below); anything else but 0 is checkov itself failing
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["check_type"] == framework, report.keys()
    return report


def failures(report: dict) -> list[str]:
    return sorted(f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})"
                  for f in report["results"]["failed_checks"])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("checkov")
    shutil.copytree(REPO / "k8s", out / "k8s")
    for values in VALUES_FILES:
        name = (values or "default-values.yaml").removesuffix(".yaml")
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered(values), sort_keys=False))
    return checkov(out)


def test_checkov_finds_nothing_in_the_rendered_chart(report):
    assert report["summary"]["parsing_errors"] == 0
    assert not failures(report), "new checkov findings (fix the chart, or skip with a reason):\n" + \
        "\n".join(failures(report))


def test_checkov_checked_the_model_pods_and_every_values_file(report):
    passed = report["results"]["passed_checks"]
    files = {f["file_path"].lstrip("/").split("/")[0] for f in passed}
    assert files >= {"k8s", "default-values.yaml", *(v for v in VALUES_FILES if v)}, files
    # the emulated predictor pods were checked, with the kinds of checks that matter for them
    ids = {f["check_id"] for f in passed if f["resource"] == "Deployment.image-classifier.fashion-mnist-predictor"}
    assert {"CKV_K8S_22", "CKV_K8S_28", "CKV_K8S_38", "CKV_K8S_40", "CKV_K8S_8", "CKV_K8S_9"} <= ids, ids


def test_every_skip_says_why(report):
    """Global skips: exactly GLOBAL_SKIPS, each with a comment on the line above it. Per-object
    skips: the upload pod's liveness probe, and the Knative-mode predictors' pod-level
    securityContext (which Knative refuses), each with its reason."""
    lines = CONFIG.read_text().splitlines()
    skipped = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\s*-\s*(CKV2?_K8S_\d+)\s*", line)
        if m:
            assert lines[i - 1].strip().startswith("#"), f".checkov.yaml: {m.group(1)} has no reason above it"
            skipped[m.group(1)] = lines[i - 1]
    assert set(skipped) == GLOBAL_SKIPS == set(yaml.safe_load(CONFIG.read_text())["skip-check"])
    per_object = {(f["check_id"], f["resource"], f["check_result"].get("suppress_comment"))
                  for f in report["results"]["skipped_checks"]}
    knative = "Knative refuses a pod-level securityContext; every container sets runAsNonRoot, uid, gid, seccompProfile"
    assert per_object == {("CKV_K8S_8", "Pod.image-classifier.image-classifier-model-upload",
                           "one-shot upload helper, a liveness probe could only interrupt the copy"),
                          ("CKV_K8S_29", "Deployment.image-classifier.fashion-mnist-predictor", knative),
                          ("CKV_K8S_29", "Deployment.image-classifier.imagenet-grpc-predictor", knative)}


def test_checkov_finds_nothing_in_the_dockerfiles():
    """The runtime images' Dockerfiles (charts/image-classifier/docker/); their two skips are
    justified inline: HEALTHCHECK (Kubernetes uses the ServingRuntime's probes instead) and the
    base image's tag (a build argument; test_images.py checks its default is versioned)."""
    report = checkov(REPO / "charts" / "image-classifier" / "docker", "dockerfile")
    assert not failures(report), "\n".join(failures(report))
    assert report["summary"]["passed"] > 0
    assert {f["check_id"] for f in report["results"]["skipped_checks"]} == {"CKV_DOCKER_2", "CKV_DOCKER_7"}


def test_checkov_fails_a_regression(tmp_path):
    """The same run on a predictor pod that lost its read-only root filesystem and allows privilege
    escalation reports both: the check above can fail."""
    objs = rendered(None)
    dep = copy.deepcopy(next(o for o in objs if o["kind"] == "Deployment"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["securityContext"]["allowPrivilegeEscalation"] = True
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dep, sort_keys=False))
    found = {f.split()[0] for f in failures(checkov(tmp_path))}
    assert {"CKV_K8S_22", "CKV_K8S_20"} <= found, found

"""Helpers of the tests that run a real control plane (the fixtures `plane` and `crds` are in
conftest.py): paths, kubectl and helm against the plane, and polling."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from scripts.cluster.control_plane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(os.environ.get("CRDS_DIR") or ROOT.parent / "shared" / "crds")
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "image-classifier"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def missing(message: str):
    """A tool the control plane needs is absent: a failure, never a skip (setup.sh installs them)."""
    pytest.fail(message)


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(KUBECTL), f"--kubeconfig={plane.kubeconfig}", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}"
    return proc


def helm(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(HELM), f"--kubeconfig={plane.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}{proc.stdout}"
    return proc


def wait_for(what: str, fn, timeout: float = 90, every: float = 0.5):
    """Poll `fn` until it returns something truthy (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not there after {timeout:.0f} s"
        time.sleep(every)

"""Fixtures of the tests that run a real control plane: the module-scoped `plane` on free loopback
ports and the real CRDs of ../shared/crds applied server-side (`crds`)."""
from __future__ import annotations

import json
import time

import pytest

from scripts.cluster import build
from scripts.cluster import kserve as kserve_mod
from scripts.cluster.control_plane import ControlPlane, pick_free_ports
from tests.cluster.helpers import CRDS, HELM, KUBECTL, kubectl, missing


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    for tool in (KUBECTL, HELM):
        if not tool.exists():
            missing(f"{tool} missing: run `bash scripts/setup.sh`")
    try:
        build.find_go()
    except build.BuildError as err:
        missing(str(err))
    t0 = time.monotonic()
    build.build()  # a BuildError fails the tests (no skip): the cached binary is the product
    built = time.monotonic() - t0
    cp = ControlPlane(tmp_path_factory.mktemp("cluster"), ports=pick_free_ports())
    state = cp.start(timeout=240, log=lambda *_: None)
    print(f"\ncontrol plane: build/cache {built:.1f} s, start {state.start_seconds:.1f} s, "
          f"rss {json.dumps({k: v // 2**20 for k, v in cp.memory().items()})} MiB")
    try:
        yield cp
    finally:
        cp.stop(log=lambda *_: None)
        assert not cp.running()


@pytest.fixture(scope="module")
def crds(plane):
    """The real KServe and prometheus-operator CRDs, applied server-side (the InferenceService
    CRD is ~2 MB: too big for client-side apply's annotation) and Established."""
    if not CRDS.is_dir():
        missing(f"no CRD folder {CRDS}: set CRDS_DIR to a folder with the KServe and "
                "prometheus-operator CRDs")
    # ../shared/crds has no ClusterStorageContainer (the chart makes one for s3:// and gs://
    # models): its CRD from the kserve module of the same release
    storage_container = next(p for p in kserve_mod.crds(kserve_mod.source())
                             if p.name == "serving.kserve.io_clusterstoragecontainers.yaml")
    kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster",
            "-f", str(CRDS / "kserve"), "-f", str(CRDS / "prometheus-operator"), "-f", str(storage_container))
    # Polled here: `kubectl wait` errors out (instead of waiting) on a CRD whose status has no
    # conditions yet, right after the apply.
    deadline = time.monotonic() + 120
    while True:
        items = json.loads(kubectl(plane, "get", "crd", "-o", "json").stdout)["items"]
        pending = [crd["metadata"]["name"] for crd in items
                   if not any(c["type"] == "Established" and c["status"] == "True"
                              for c in crd.get("status", {}).get("conditions") or [])]
        if not pending:
            return [f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']}"
                    for crd in items]
        assert time.monotonic() < deadline, f"CRDs not Established after 120 s: {pending}"
        time.sleep(0.5)

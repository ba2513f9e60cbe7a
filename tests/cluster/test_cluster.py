"""Tier 1 of the real-Kubernetes issue: a control plane built from the upstream modules of one
pinned release (scripts/cluster), started on free loopback ports, and the project's manifests
applied to it for real.

The integration tests share one control plane (module fixture): the real KServe v0.20.0 and
prometheus-operator CRDs from ../shared/crds (or CRDS_DIR) are applied server-side first, then
`kubectl apply --server-side -k k8s/` and `helm install` of the chart with the default values and
each ci/*.yaml file; every object must be persisted. Bad manifests must be refused by the server,
and the server's own message is asserted.

The first run builds the binary (many minutes on 2 cores: `make cluster-build` does the same);
later runs find it in the cache. Under CI=true nothing is skipped: a missing Go or a failed
build fails the tests.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from scripts.cluster import build, certs
from scripts.cluster.control_plane import ORDER, ClusterError, ControlPlane, pick_free_ports
from tests.cluster.helpers import CHART, CI_VALUES, CRDS, ROOT, helm, kubectl, missing

# pytest-timeout counts fixture set-up: the first integration test may have to build the binary
# (a cold build took ~12 min on 2 cores); warm, the whole module takes under a minute.
pytestmark = pytest.mark.timeout(2700)


# --- without a server ----------------------------------------------------------------------------

def test_pinned_release_and_cache_folder():
    assert build.kubernetes_version() == "v1.34.4"
    assert build.etcd_version().startswith("v3.6.")
    folder = build.bin_dir()
    assert folder.name == f"v1.34.4-{build.source_hash()}"
    assert ROOT not in folder.parents, "build output must stay outside the repository"
    go_mod = (build.GO_DIR / "go.mod").read_text()
    # k8s.io/kubernetes's own godebug line and one replace per staging module at v0.34.4.
    assert "godebug default=go1.24" in go_mod
    for staging in ("k8s.io/api", "k8s.io/apiserver", "k8s.io/kube-aggregator", "k8s.io/kubelet"):
        assert f"{staging} => {staging} v0.34.4" in go_mod
    assert (build.GO_DIR / "go.sum").stat().st_size > 0


def test_source_hash_follows_the_sources(tmp_path, monkeypatch):
    before = build.source_hash()
    for name in build.SOURCES:
        shutil.copy(build.GO_DIR / name, tmp_path / name)
    monkeypatch.setattr(build, "GO_DIR", tmp_path)
    assert build.source_hash() == before
    (tmp_path / "main.go").write_text((tmp_path / "main.go").read_text() + "\n// changed\n")
    assert build.source_hash() != before


def test_cache_folder_honours_xdg_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("CLUSTER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "image-classifier" / "cluster"
    monkeypatch.setenv("CLUSTER_CACHE_DIR", str(tmp_path / "c"))
    assert build.bin_dir().parent == tmp_path / "c"


def test_version_stamps_in_ldflags():
    flags = build.ldflags("v1.34.4")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X={package}.gitVersion=v1.34.4" in flags
        assert f"-X={package}.gitMinor=34" in flags


def test_missing_go_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build, "GO_FALLBACKS", ())
    with pytest.raises(build.BuildError, match="Go is not installed"):
        build.find_go()


def openssl(*args: str) -> str:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.integration
def test_certificates(tmp_path):
    pki = certs.make_all(tmp_path / "pki")
    leaves = ["apiserver", "components-serving"] + [c.stem for c in certs.CLIENTS]
    out = openssl("verify", "-CAfile", str(pki / "ca.crt"), *(str(pki / f"{n}.crt") for n in leaves))
    assert out.count(": OK") == len(leaves)
    openssl("verify", "-CAfile", str(pki / "front-proxy-ca.crt"), str(pki / "front-proxy-client.crt"))
    admin = openssl("x509", "-in", str(pki / "admin.crt"), "-noout", "-subject", "-ext",
                    "extendedKeyUsage")
    assert "O = system:masters, CN = kubernetes-admin" in admin and "Client Authentication" in admin
    server = openssl("x509", "-in", str(pki / "apiserver.crt"), "-noout", "-ext", "subjectAltName")
    for name in ("IP Address:127.0.0.1", f"IP Address:{certs.API_SERVICE_IP}",
                 "DNS:kubernetes.default.svc.cluster.local"):
        assert name in server
    assert oct((pki / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_component_flags(tmp_path):
    plane = ControlPlane(tmp_path, ports=pick_free_ports())
    bin_dir = Path("/bin-dir")
    api = plane.command("kube-apiserver", bin_dir)
    assert api[0] == "/bin-dir/kube-apiserver"
    assert "--authorization-mode=Node,RBAC" in api and "--bind-address=127.0.0.1" in api
    assert f"--etcd-servers=http://127.0.0.1:{plane.ports['etcd']}" in api
    cm = plane.command("kube-controller-manager", bin_dir)
    assert f"--root-ca-file={plane.pki / 'ca.crt'}" in cm and "--use-service-account-credentials=true" in cm
    for name in ORDER:  # every process names the state folder: `stop` checks that before a kill
        assert any(str(tmp_path) in arg for arg in plane.command(name, bin_dir)), name


def test_port_in_use_is_refused_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ports = pick_free_ports()
        ports["kube-apiserver"] = s.getsockname()[1]
        plane = ControlPlane(tmp_path / "state", ports=ports)
        taken = f"ports already in use: kube-apiserver port {ports['kube-apiserver']}"
        with pytest.raises(ClusterError, match=taken):
            plane.start()
    assert not (tmp_path / "state" / "state.json").exists()


def test_cli_status_and_stop_when_nothing_runs(tmp_path, capsys):
    from scripts.cluster.__main__ import main

    assert main(["status", "--state-dir", str(tmp_path)]) == 3
    assert main(["stop", "--state-dir", str(tmp_path)]) == 0
    assert "not running" in capsys.readouterr().out


# --- against the real control plane -------------------------------------------------------------

@pytest.mark.integration
def test_control_plane_is_ready_and_reports_the_pinned_version(plane):
    for name in ORDER:
        ok, detail = plane.healthy(name)
        assert ok, f"{name}: {detail}"
    version = json.loads(kubectl(plane, "version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == "v1.34.4" and version["minor"] == "34"
    # The controller-manager works: each namespace gets its `default` ServiceAccount and the
    # kube-root-ca.crt ConfigMap (from --root-ca-file) that pods mount.
    # Two controllers make them, each on its own schedule: wait for both.
    for kind, name in (("serviceaccount", "default"), ("configmap", "kube-root-ca.crt")):
        deadline = time.monotonic() + 60
        while kubectl(plane, "get", kind, name, "-n", "default", check=False).returncode:
            assert time.monotonic() < deadline, f"no {kind} {name}: is the controller-manager working?"
            time.sleep(1)
    root_ca = json.loads(kubectl(plane, "get", "configmap", "kube-root-ca.crt", "-o", "json").stdout)
    assert root_ca["data"]["ca.crt"] == (plane.pki / "ca.crt").read_text()
    # RBAC is on: a ServiceAccount may not list secrets.
    can = kubectl(plane, "auth", "can-i", "list", "secrets", "--as=system:serviceaccount:default:default",
                  check=False)
    assert can.stdout.strip() == "no"


@pytest.mark.integration
def test_crds_are_established(crds):
    for name in ("inferenceservices.serving.kserve.io", "servingruntimes.serving.kserve.io",
                 "clusterservingruntimes.serving.kserve.io", "podmonitors.monitoring.coreos.com",
                 "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in crds


def persisted(plane: ControlPlane, manifest: str) -> list[str]:
    """Names of the objects of `manifest` that the server holds (kubectl get -f -)."""
    return kubectl(plane, "get", "-f", "-", "-o", "name", stdin=manifest).stdout.split()


def documents(manifest: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(manifest) if d]


@pytest.mark.integration
def test_kustomize_apply_server_side_accepts_every_object(plane, crds):
    manifest = kubectl(plane, "kustomize", str(ROOT / "k8s")).stdout
    objs = documents(manifest)
    out = kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-k",
                  str(ROOT / "k8s")).stdout
    assert len(out.strip().splitlines()) == len(objs), out
    names = persisted(plane, manifest)
    assert len(names) == len(objs)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "InferenceService", "ServingRuntime", "PodMonitor", "PrometheusRule",
            "NetworkPolicy", "PersistentVolumeClaim", "Pod"} <= kinds
    # What the server persisted is what we sent (spot check on a custom resource).
    isvc = json.loads(kubectl(plane, "get", "inferenceservice", "fashion-mnist", "-n",
                              "image-classifier", "-o", "json").stdout)
    sent = next(o for o in objs
                if o["kind"] == "InferenceService" and o["metadata"]["name"] == "fashion-mnist")
    assert isvc["spec"]["predictor"]["model"] == sent["spec"]["predictor"]["model"]
    # A second apply is a no-op conflict-free update (server-side apply owns the fields).
    again = kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-k",
                    str(ROOT / "k8s")).stdout
    assert "serverside-applied" in again


@pytest.mark.integration
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_helm_install_accepts_every_object(plane, crds, values):
    stem = values.stem.removesuffix("-values") if values else "default"
    namespace = f"ic-{stem}"
    args = ["--set", f"namespace.name={namespace}"]
    if values:
        args += ["-f", str(values)]
    rendered = helm(plane, "template", "ic", str(CHART), *args).stdout
    if not any(o["kind"] == "Namespace" for o in documents(rendered)):  # namespace.create: false
        kubectl(plane, "create", "namespace", namespace)
    # The release record lives in `default`; the chart's objects in their own namespace.
    out = helm(plane, "install", f"ic-{stem}", str(CHART), "--namespace", "default", *args)
    assert "STATUS: deployed" in out.stdout, out.stdout
    manifest = helm(plane, "get", "manifest", f"ic-{stem}", "--namespace", "default").stdout
    objs = documents(manifest)
    assert objs and len(persisted(plane, manifest)) == len(objs)
    isvcs = kubectl(plane, "get", "inferenceservices", "-n", namespace, "-o", "name").stdout.split()
    assert len(isvcs) == sum(o["kind"] == "InferenceService" for o in objs) > 0


BAD_NS = "refusals"


@pytest.fixture(scope="module")
def bad_ns(plane, crds) -> str:
    """A namespace of its own for the bad objects, so that a wrong refusal reason (a missing
    namespace) cannot pass for the expected one."""
    kubectl(plane, "create", "namespace", BAD_NS)
    return BAD_NS


def refused(plane: ControlPlane, obj: dict, verb: str = "apply") -> str:
    """Send `obj` with strict field validation (--validate=strict sends the API's
    fieldValidation=Strict): server-side apply, or a plain create; it must be refused, and
    nothing stored. Returns the server's message."""
    args = ["apply", "--server-side", "--field-manager=test-cluster"] if verb == "apply" else ["create"]
    proc = kubectl(plane, *args, "--validate=strict", "-f", "-", stdin=json.dumps(obj), check=False)
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    meta = obj["metadata"]
    # The server said no, not kubectl: a server error, or kubectl's form of a 422 Invalid status.
    assert ("Error from server" in proc.stderr
            or f'{obj["kind"]} "{meta["name"]}" is invalid: ' in proc.stderr), proc.stderr
    gone = kubectl(plane, "get", obj["kind"], meta["name"], "-n", meta["namespace"], check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
    return proc.stderr


def k8s_object(kind: str, name: str | None = None) -> dict:
    """A copy of an object of k8s/, renamed and moved to the refusals namespace."""
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        for obj in documents(path.read_text()):
            if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name):
                obj = copy.deepcopy(obj)
                obj["metadata"]["name"] = f"bad-{obj['metadata']['name']}"[:63]
                obj["metadata"]["namespace"] = BAD_NS
                return obj
    raise LookupError(kind)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["PersistentVolumeClaim", "InferenceService"])
def test_unknown_field_is_refused(plane, bad_ns, kind):
    obj = k8s_object(kind)
    obj["spec"]["replicaz"] = 2
    message = refused(plane, obj)
    assert ".spec.replicaz: field not declared in schema" in message, message


@pytest.mark.integration
def test_wrong_type_is_refused(plane, bad_ns):
    obj = k8s_object("InferenceService", "fashion-mnist")
    obj["spec"]["predictor"]["minReplicas"] = "one"
    # Server-side apply types the patch against the CRD's schema first...
    message = refused(plane, obj)
    assert ".spec.predictor.minReplicas: expected numeric (int or float), got string" in message, message
    # ...a plain create meets the CRD's OpenAPI validation.
    message = refused(plane, obj, verb="create")
    assert "spec.predictor.minReplicas in body must be of type integer" in message, message
    pod = k8s_object("Pod")
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    message = refused(plane, pod)
    assert "containerPort" in message and "expected numeric" in message, message


@pytest.mark.integration
def test_invalid_label_value_is_refused(plane, bad_ns):
    obj = k8s_object("PersistentVolumeClaim")
    obj["metadata"]["labels"]["app.kubernetes.io/version"] = "0.1.0 (bad)"
    message = refused(plane, obj)
    assert 'metadata.labels: Invalid value: "0.1.0 (bad)"' in message, message
    assert "a valid label must be an empty string or consist of alphanumeric characters" in message


@pytest.mark.integration
def test_kserve_crd_schema_rule_is_enforced(plane, bad_ns):
    """The InferenceService CRD of KServe v0.20.0 has no CEL rules (those are in its
    LocalModelCache and LLMInferenceService CRDs, below): its constraints are OpenAPI ones
    (enum, minimum/maximum), enforced by the server's structural validation."""
    obj = k8s_object("InferenceService", "fashion-mnist")
    obj["spec"]["predictor"]["scaleMetric"] = "gpu"
    message = refused(plane, obj)
    assert 'spec.predictor.scaleMetric: Unsupported value: "gpu": supported values: ' \
           '"cpu", "memory", "concurrency", "rps"' in message, message
    obj = k8s_object("InferenceService", "fashion-mnist")
    obj["spec"]["canary"] = [{"trafficPercent": 101}]
    obj["spec"]["predictor"]["canaryTrafficPercent"] = 10
    message = refused(plane, obj)
    assert "should be less than or equal to 100" in message, message


@pytest.mark.integration
def test_control_plane_memory(plane):
    memory = plane.memory()
    assert set(memory) == set(ORDER)
    # A guard against a runaway, not a benchmark: the four together stay well under 2 GiB here.
    assert sum(memory.values()) < 2 * 2**30, memory


@pytest.fixture(scope="module")
def kserve_src() -> Path:
    """KServe's source at the pinned release, from the Go module proxy (Go's module cache): its
    CRDs with CEL rules are not among the three that ../shared/crds holds."""
    try:
        build.find_go()
    except build.BuildError as err:
        missing(str(err))
    return build.module_source(build.KSERVE_MODULE, build.KSERVE_VERSION)


@pytest.mark.integration
def test_kserve_cel_rule_is_enforced(plane, kserve_src):
    """KServe v0.20.0's LocalModelCache CRD, as released: `sourceModelUri` carries the CEL
    transition rule `self == oldSelf` ("StorageUri is immutable")."""
    crd = kserve_src / "config/crd/full/localmodel/serving.kserve.io_localmodelcaches.yaml"
    assert "rule: self == oldSelf" in crd.read_text()
    kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-f", str(crd))
    cache = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
             "metadata": {"name": "fashion-mnist"},
             "spec": {"sourceModelUri": "pvc://image-classifier-models/fashion-mnist",
                      "modelSize": "10Mi", "nodeGroups": ["cpu"]}}
    deadline = time.monotonic() + 60  # the new kind is served a moment after its CRD is stored
    while kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-f", "-",
                  stdin=json.dumps(cache), check=False).returncode:
        assert time.monotonic() < deadline, "LocalModelCache not accepted"
        time.sleep(1)
    cache["spec"]["sourceModelUri"] = "pvc://image-classifier-models/fashion-mnist-v2"
    proc = kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-f", "-",
                   stdin=json.dumps(cache), check=False)
    assert proc.returncode != 0, proc.stdout
    assert ('LocalModelCache "fashion-mnist" is invalid: spec.sourceModelUri: '
            'Invalid value: "string": StorageUri is immutable') in proc.stderr, proc.stderr
    stored = json.loads(kubectl(plane, "get", "localmodelcache", "fashion-mnist", "-o", "json").stdout)
    assert stored["spec"]["sourceModelUri"] == "pvc://image-classifier-models/fashion-mnist"


@pytest.mark.integration
def test_cel_admission_policy_on_inferenceservices(plane, bad_ns):
    """The API server evaluates CEL for KServe's kinds: a ValidatingAdmissionPolicy (GA since
    1.30) holding InferenceServices of one namespace to at least one replica."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "isvc-min-replicas"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["serving.kserve.io"], "apiVersions": ["v1beta1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["inferenceservices"]}]},
            "validations": [{
                "expression": "!has(object.spec.predictor.minReplicas) || "
                              "object.spec.predictor.minReplicas >= 1",
                "message": "predictor.minReplicas must be at least 1 (no scale to zero)"}]}}
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "isvc-min-replicas"},
        "spec": {"policyName": "isvc-min-replicas", "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": bad_ns}}}}}
    kubectl(plane, "apply", "--server-side", "--field-manager=test-cluster", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}))
    try:
        obj = k8s_object("InferenceService", "fashion-mnist")
        obj["spec"]["predictor"]["minReplicas"] = 0
        deadline = time.monotonic() + 30  # the policy takes effect once its informer has synced
        while True:
            proc = kubectl(plane, "create", "-f", "-", stdin=json.dumps(obj), check=False)
            if proc.returncode:
                break
            kubectl(plane, "delete", "-f", "-", stdin=json.dumps(obj))
            assert time.monotonic() < deadline, "the ValidatingAdmissionPolicy never took effect"
            time.sleep(1)
        assert ("ValidatingAdmissionPolicy 'isvc-min-replicas' with binding 'isvc-min-replicas' "
                "denied request: predictor.minReplicas must be at least 1") in proc.stderr, proc.stderr
        obj["spec"]["predictor"]["minReplicas"] = 1
        kubectl(plane, "create", "-f", "-", stdin=json.dumps(obj))
        kubectl(plane, "delete", "-f", "-", stdin=json.dumps(obj))
    finally:
        kubectl(plane, "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                "isvc-min-replicas", "--ignore-not-found")


@pytest.mark.integration
def test_a_failing_component_is_reported_with_its_log_and_the_rest_stopped(plane, tmp_path):
    class Broken(ControlPlane):
        def command(self, name, bin_dir):
            cmd = super().command(name, bin_dir)
            return cmd + ["--no-such-flag"] if name == "kube-apiserver" else cmd

    broken = Broken(tmp_path / "broken", ports=pick_free_ports())
    with pytest.raises(ClusterError) as err:
        broken.start(timeout=60, log=lambda *_: None)
    message = str(err.value)
    assert message.startswith("kube-apiserver exited with 1 before it was ready")
    assert "unknown flag: --no-such-flag" in message  # the last lines of its log
    assert not broken.running()  # etcd, started before it, was stopped again

"""Tier 2 of the real-Kubernetes issue: KServe's own controller manager (v0.20.0, built from the
kserve Go module by scripts/cluster/kserve.py) in the local control plane, with its CRDs, its
inferenceservice-config ConfigMap and its webhooks served on loopback with local certificates.

For every InferenceService of the chart's Standard-mode values files, installed with helm into a
namespace of its own: the real controller creates the Deployment, Service and HPA, and reports
status conditions (PredictorReady False: no kubelet runs, so no replica becomes available). The
controller-manager's ReplicaSet controller then creates the Pods (pending: no Node exists), and
KServe's pod mutator webhook really mutates them: the Pod objects read back from the API server
must equal the emulation of tests/deploy/kserve_pod.py field by field (differences are also written to
kserve-controller-differences.json in the `artifacts` folder), but for the storage initializer's credential variables. Two of the real pod specs
then run with podman (scripts/containers/pod.py) and answer a real image. KServe's validating
webhook refuses a bad InferenceService, with its own message.

Knative mode is not run: Knative Serving is out of scope here, so knative-canary-values.yaml keeps
the schema checks of tests/cluster/test_cluster.py and the Knative rules of tests/deploy/kserve_pod.py.

A missing Go or a failed build fails these tests (never a skip). The first run may build KServe's
manager (minutes, once; `make kserve-build` does the same); later runs find it in the cache.
"""
from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import pytest

from scripts.cluster import build
from scripts.cluster import kserve as kserve_mod
from scripts.containers.pod import PodRunner
from tests.cluster.helpers import CHART, ROOT, helm, kubectl, missing, wait_for
from tests.containers.test_pods import (PROBE_PERIOD_S, READY_S, call, claim_root, family,  # noqa: F401
                                       inputs, runtime_images)
from tests.deploy.kserve_pod import (gateway_target_port, metrics_ports, of_kind, one, predictor_pod, render,
                                     serving_port)

pytestmark = pytest.mark.timeout(2700)

# The Standard-mode values files (knative-canary needs Knative Serving; gpu-values a GPU node:
# both out of scope here).
VALUES = [None, "v2-values.yaml", "grpc-v2-values.yaml", "monitoring-off-values.yaml",
          "s3-servicemonitor-values.yaml", "modelcar-values.yaml", "auth-values.yaml"]
ISVC_LABEL = "serving.kserve.io/inferenceservice"
PLAIN_NS = "kserve-dry-run"  # no Pod Security labels: the validating webhook's refusals
RESTRICTED_NS = "restricted-dry-run"  # Pod Security "restricted": what a modelcar pod meets there


def stem(values: str | None) -> str:
    return values.removesuffix("-values.yaml") if values else "default"


def namespace(values: str | None) -> str:
    return f"ic-{stem(values)}"


CASES = [(v, i["metadata"]["name"]) for v in VALUES for i in of_kind(render(v), "InferenceService")]
IDS = [f"{stem(v)}-{n}" for v, n in CASES]


def storage(values, name) -> str:
    return one(render(values), "InferenceService", name)["spec"]["predictor"]["model"]["storageUri"]


def get(plane, kind: str, name: str, ns: str, check: bool = True) -> dict | None:
    proc = kubectl(plane, "get", kind, name, "-n", ns, "-o", "json", check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


# --- without a server ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kserve_src() -> Path:
    try:
        build.find_go()
    except build.BuildError as err:
        missing(str(err))
    return kserve_mod.source()


def test_cache_folder_is_versioned_and_outside_the_repository():
    folder = kserve_mod.bin_dir()
    assert folder.name == f"kserve-{build.KSERVE_VERSION}-{kserve_mod.recipe_hash()}"
    assert folder.parent == build.cache_root() and ROOT not in folder.parents


def test_configmap_edits(kserve_src):
    cm = kserve_mod.configmap(kserve_src)
    data = {k: v for k, v in cm["data"].items() if k != "_example"}
    assert json.loads(data["deploy"])["defaultDeploymentMode"] == "Standard"
    assert json.loads(data["storageInitializer"])["image"] == "kserve/storage-initializer:v0.20.0"
    assert ":latest" not in json.dumps(data) and '"latest"' not in json.dumps(data)
    for key in ("storageInitializer", "agent", "logger", "batcher"):  # the pod mutator needs these
        config = json.loads(data[key])
        assert all(config[q] for q in ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"))
    assert json.loads(data["ingress"])["ingressGateway"]
    assert cm["metadata"] == {"name": "inferenceservice-config", "namespace": "kserve"}


def test_webhooks_point_at_loopback_with_our_ca(kserve_src):
    objs = kserve_mod.webhooks(kserve_src, 12345, b"CA")
    hooks = [h for o in objs for h in o["webhooks"]]
    assert {o["kind"] for o in objs} == {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    assert "https://127.0.0.1:12345/mutate-pods" in {h["clientConfig"]["url"] for h in hooks}
    assert all(set(h["clientConfig"]) == {"url", "caBundle"} and h["clientConfig"]["caBundle"] == "Q0E="
               for h in hooks)


# --- the real controller -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kserve(plane, crds):
    t0 = time.monotonic()
    kserve_mod.build_manager()  # a BuildError fails the tests: the cached binary is the product
    built = time.monotonic() - t0
    manager = kserve_mod.KServe(plane)
    lines = []
    state = manager.start(timeout=180, log=lines.append)
    print(f"\nkserve manager: build/cache {built:.1f} s, start {state.start_seconds:.1f} s, "
          f"rss {manager.memory() // 2**20} MiB; " + "; ".join(lines))
    kubectl(plane, "create", "namespace", PLAIN_NS)
    try:
        yield manager
    finally:
        print(f"\nkserve manager rss at the end: {manager.memory() // 2**20} MiB")
        manager.stop(log=lambda *_: None)
        assert not manager.running()


@pytest.fixture(scope="module")
def releases(plane, kserve) -> dict[str | None, float]:
    """helm install of each values file into its own namespace; values -> seconds from
    `helm install` until every predictor Deployment of the release exists."""
    seconds = {}
    for values in VALUES:
        ns = namespace(values)
        args = ["--set", f"namespace.name={ns}"] + (["-f", str(CHART / "ci" / values)] if values else [])
        rendered = helm(plane, "template", "x", str(CHART), *args).stdout
        if "\nkind: Namespace\n" not in rendered:  # namespace.create: false
            kubectl(plane, "create", "namespace", ns)
        t0 = time.monotonic()
        out = helm(plane, "install", f"ic-{stem(values)}", str(CHART), "--namespace", "default", *args)
        assert "STATUS: deployed" in out.stdout, out.stdout
        for name in (n for v, n in CASES if v == values):
            wait_for(f"Deployment {ns}/{name}-predictor",
                     lambda: get(plane, "deployment", f"{name}-predictor", ns, check=False), every=0.1)
        seconds[values] = round(time.monotonic() - t0, 2)
    print(f"\nhelm install -> Deployments exist: {json.dumps({stem(v): s for v, s in seconds.items()})}")
    return seconds


@pytest.mark.integration
def test_manager_is_healthy_and_its_webhooks_registered(kserve, plane):
    ok, detail = kserve.healthy()
    assert ok, detail
    names = kubectl(plane, "get", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                    "-o", "name").stdout.split()
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/inferenceservice.serving.kserve.io" in names
    assert len([n for n in names if "serving.kserve.io" in n]) == 6
    assert kserve.memory() < 512 * 2**20


@pytest.mark.integration
@pytest.mark.parametrize("values, name", CASES, ids=IDS)
def test_controller_creates_deployment_service_hpa_and_conditions(plane, releases, values, name):
    ns = namespace(values)
    isvc = one(render(values), "InferenceService", name)
    predictor = isvc["spec"]["predictor"]
    deployment = get(plane, "deployment", f"{name}-predictor", ns)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("InferenceService", name)
    assert deployment["spec"]["template"]["metadata"]["labels"][ISVC_LABEL] == name
    service = get(plane, "service", f"{name}-predictor", ns)
    assert service["spec"]["selector"] == {"app": f"isvc.{name}-predictor"}
    hpa = wait_for(f"HPA {ns}/{name}-predictor",
                   lambda: get(plane, "hpa", f"{name}-predictor", ns, check=False))
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": f"{name}-predictor"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (predictor["minReplicas"],
                                                                       predictor["maxReplicas"])
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == predictor["scaleMetric"]
    assert metric["resource"]["target"] == {"type": "Utilization",
                                            "averageUtilization": predictor["scaleTarget"]}

    def conditions():
        status = get(plane, "inferenceservice", name, ns).get("status") or {}
        found = {c["type"]: c for c in status.get("conditions") or []}
        return found if "PredictorReady" in found else None

    found = wait_for(f"status conditions of {ns}/{name}", conditions)
    assert {"PredictorReady", "IngressReady", "Ready"} <= set(found), found
    assert found["PredictorReady"]["status"] == "False" and found["PredictorReady"]["reason"], found
    assert found["Ready"]["status"] == "False"
    status = get(plane, "inferenceservice", name, ns)["status"]
    assert status["deploymentMode"] == "Standard"
    assert status["servingRuntimeName"] == isvc["spec"]["predictor"]["model"]["runtime"]


# --- the pods: real (webhook-mutated) vs emulated ------------------------------------------------

def real_pod(plane, values, name) -> dict:
    """The predictor Pod as the API server stores it after KServe's pod mutator."""
    ns = namespace(values)

    def pods():
        items = json.loads(kubectl(plane, "get", "pods", "-n", ns, "-l", f"{ISVC_LABEL}={name}",
                                   "-o", "json").stdout)["items"]
        return items[0] if items else None

    return wait_for(f"predictor pod of {ns}/{name}", pods)


def server_defaulted(plane, ns: str, spec: dict) -> dict:
    """The emulated pod spec with the API server's defaults (probe successThreshold, scheme,
    terminationMessagePath, dnsPolicy...), from a server-side dry run of a Pod without KServe's
    label (so no webhook touches it)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "emulated-", "namespace": ns},
           "spec": spec}
    proc = kubectl(plane, "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod),
                   check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["spec"]


CONTAINER_FIELDS = ("image", "command", "args", "env", "ports", "readinessProbe", "livenessProbe",
                    "startupProbe", "securityContext", "resources", "lifecycle", "volumeMounts",
                    "terminationMessagePolicy")
POD_FIELDS = ("volumes", "securityContext", "terminationGracePeriodSeconds", "shareProcessNamespace",
              "serviceAccountName", "automountServiceAccountToken")


def differences(real: dict, emulated: dict) -> dict[str, list]:
    """path -> [real, emulated] for every compared field that differs."""
    out = {}
    for field in POD_FIELDS:
        if real.get(field) != emulated.get(field):
            out[field] = [real.get(field), emulated.get(field)]
    for group in ("initContainers", "containers"):
        real_c = {c["name"]: c for c in real.get(group) or []}
        emu_c = {c["name"]: c for c in emulated.get(group) or []}
        for cname in sorted(set(real_c) | set(emu_c)):
            if cname not in real_c or cname not in emu_c:
                out[f"{group}[{cname}]"] = [real_c.get(cname), emu_c.get(cname)]
                continue
            for field in CONTAINER_FIELDS:
                if real_c[cname].get(field) != emu_c[cname].get(field):
                    out[f"{group}[{cname}].{field}"] = [real_c[cname].get(field), emu_c[cname].get(field)]
    return out


def env_names(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env") or []]


@pytest.mark.integration
@pytest.mark.parametrize("values, name", CASES, ids=IDS)
def test_pod_mutator_output_vs_emulation(plane, releases, values, name, artifacts):
    objs = render(values)
    isvc = one(objs, "InferenceService", name)
    uri = storage(values, name)
    pod = real_pod(plane, values, name)
    meta, real = pod["metadata"], pod["spec"]
    # KServe's pod mutator ran: it marks the pod with the storage URI it handled.
    assert meta["annotations"]["internal.serving.kserve.io/storage-initializer-sourceuri"] == uri
    assert not real.get("nodeName"), "no Node exists: the pod stays unscheduled"
    kserve_container = real["containers"][0]
    assert kserve_container["name"] == "kserve-container"
    assert {"name": "INFERENCE_SERVICE_NAME", "value": name} in kserve_container["env"]

    emulated = server_defaulted(plane, namespace(values), predictor_pod(objs, isvc))
    diffs = differences(real, emulated)
    record(artifacts, values, name, diffs)
    if uri.startswith("s3://"):
        init = real["initContainers"][0]
        assert (init["name"], init["image"], init["args"]) == \
            ("storage-initializer", kserve_mod.STORAGE_INITIALIZER_IMAGE, [uri, "/mnt/models"])
        # the one part not emulated: the credentials KServe's credential builder reads from the
        # storage Secret (tests/containers/test_pods.py runs a stand-in that reads no object store)
        refs = [e["name"] for e in diffs.pop("initContainers[storage-initializer].env")[0] if "valueFrom" in e]
        assert refs == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], refs
        # the release's ClusterStorageContainer, merged over KServe's init container by its webhook
        stored = get(plane, "inferenceservice", name, namespace(values))
        assert meta["annotations"]["internal.serving.kserve.io/storage-container-name"] == \
            stored["spec"]["predictor"]["storageContainerName"] == f"image-classifier-{namespace(values)}"
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
    elif uri.startswith("oci://"):
        # KServe runs the runtime as the modelcar's uid (uidModelcar) so that it can read the
        # modelcar's /models through /proc/<pid>/root.
        assert kserve_container["securityContext"]["runAsUser"] == 1010 and real["shareProcessNamespace"]
    else:
        # pvc://: no init container; the claim itself at /mnt/models, read-only, subPath = path.
        assert not real.get("initContainers")
        mount = next(m for m in kserve_container["volumeMounts"] if m["mountPath"] == "/mnt/models")
        assert mount == {"name": "kserve-pvc-source", "mountPath": "/mnt/models", "readOnly": True,
                         "subPath": uri.split("/", 3)[3]}
    assert diffs == {}, json.dumps(diffs, indent=1)[:3000]


def record(artifacts: Path, values, name, diffs: dict) -> None:
    path = artifacts / "kserve-controller-differences.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[f"{stem(values)}/{name}"] = diffs
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


@pytest.mark.integration
def test_a_modelcar_namespace_is_baseline_because_kserves_modelcar_is_not_restricted(plane, releases):
    """KServe v0.20.0's modelcar sidecar and init container carry neither
    allowPrivilegeEscalation=false nor capabilities.drop=[ALL]: Pod Security "restricted" refuses
    the pod (the ReplicaSet could never create it), so the chart's namespace enforces "baseline"
    when a model uses oci://. The day KServe fixes its containers, the refusal below stops and the
    namespace can go back to "restricted"."""
    ns = namespace("modelcar-values.yaml")
    labels = json.loads(kubectl(plane, "get", "namespace", ns, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    pod = real_pod(plane, "modelcar-values.yaml", "fashion-mnist")  # created: baseline admits it
    kubectl(plane, "create", "namespace", RESTRICTED_NS, check=False)
    kubectl(plane, "label", "--overwrite", "namespace", RESTRICTED_NS, "pod-security.kubernetes.io/enforce=restricted")
    again = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "modelcar-", "namespace": RESTRICTED_NS},
             "spec": pod["spec"]}
    proc = kubectl(plane, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(again), check=False)
    assert proc.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
    assert 'containers "modelcar-init", "modelcar" must set securityContext.allowPrivilegeEscalation=false' \
        in proc.stderr, proc.stderr


@pytest.mark.integration
def test_an_object_storage_pod_meets_restricted_with_the_releases_storage_container(plane, releases):
    """With the chart's ClusterStorageContainer, the pod KServe's webhook made for an s3:// model
    passes Pod Security "restricted"; with KServe's default one (no securityContext) it does not."""
    pod = real_pod(plane, "s3-servicemonitor-values.yaml", "fashion-mnist")
    kubectl(plane, "create", "namespace", RESTRICTED_NS, check=False)
    kubectl(plane, "label", "--overwrite", "namespace", RESTRICTED_NS, "pod-security.kubernetes.io/enforce=restricted")

    def admitted(spec: dict) -> subprocess.CompletedProcess:
        again = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "s3-", "namespace": RESTRICTED_NS},
                 "spec": spec}
        return kubectl(plane, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(again), check=False)

    kubectl(plane, "create", "serviceaccount", pod["spec"]["serviceAccountName"], "-n", RESTRICTED_NS, check=False)
    ok = admitted(pod["spec"])
    assert ok.returncode == 0, ok.stderr
    default = copy.deepcopy(pod["spec"])
    default["initContainers"][0].pop("securityContext")  # what KServe's default storage container gives
    refused = admitted(default)
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
    assert 'container "storage-initializer" must set securityContext.allowPrivilegeEscalation=false' in refused.stderr


@pytest.mark.integration
@pytest.mark.parametrize("values, name", [(v, n) for v, n in CASES if v in (None, "grpc-v2-values.yaml")],
                         ids=["default-fashion-mnist", "default-imagenet", "grpc-v2-fashion-mnist"])
def test_the_service_sends_port_80_to_rest_and_grpc_to_its_own_port(plane, releases, values, name):
    """The predictor Service KServe makes: port 80 (where its Ingress points, made once the
    predictor is Ready: tests/cluster/test_cluster_node.py) targets the first container port, REST; the h2c
    port keeps its number with appProtocol h2c (in-cluster gRPC, and Gateway API's gRPC route). As
    the emulation says (tests/deploy/kserve_pod.py gateway_target_port) and NOTES.txt tells."""
    ns = namespace(values)
    service = get(plane, "service", f"{name}-predictor", ns)
    container = real_pod(plane, values, name)["spec"]["containers"][0]
    port80 = next(p for p in service["spec"]["ports"] if p["port"] == 80)
    assert port80["targetPort"] == gateway_target_port(container, "/inference.GRPCInferenceService/ModelInfer") \
        == serving_port(container, "v1")
    grpc_port = serving_port(container, "grpc-v2")
    h2c = next(p for p in service["spec"]["ports"] if p["port"] == grpc_port)
    assert (h2c["targetPort"], h2c["appProtocol"]) == (grpc_port, "kubernetes.io/h2c")
    assert gateway_target_port(container, "/inference.GRPCInferenceService/ModelInfer", gateway_api=True) == grpc_port
    if values == "grpc-v2-values.yaml":
        args = ["--set", f"namespace.name={ns}", "-f", str(CHART / "ci" / values)]
        notes = helm(plane, "install", "--dry-run=client", "x", str(CHART), *args).stdout
        assert f"--grpc-target {name}-predictor.{ns}.svc.cluster.local:{grpc_port}" in notes


@pytest.mark.integration
def test_helm_upgrade_to_another_deployment_mode_is_refused_with_a_message(plane, releases):
    """KServe's webhook refuses to change a deployment mode in place; the chart says so first."""
    ns = namespace(None)
    proc = helm(plane, "upgrade", "ic-default", str(CHART), "--namespace", "default", "--set", f"namespace.name={ns}",
                "-f", str(CHART / "ci" / "knative-canary-values.yaml"), check=False)
    assert proc.returncode != 0
    assert "the InferenceService runs in deploymentMode Standard and KServe cannot switch it to Knative in place" \
        in proc.stderr, proc.stderr


@pytest.mark.integration
def test_keda_values_become_a_scaled_object_with_the_charts_prometheus_trigger(plane, kserve):
    """autoscalerClass keda: KServe's controller (KEDA's ScaledObject CRD installed before it
    started, scripts/cluster/kserve.py) makes a ScaledObject per predictor whose Prometheus trigger
    is the chart's query and target, and no HPA of its own. No KEDA operator runs here, so nothing
    scales: the ScaledObject is KServe's part, what KEDA would act on."""
    values, ns = "keda-values.yaml", namespace("keda-values.yaml")
    args = ["--set", f"namespace.name={ns}", "-f", str(CHART / "ci" / values)]
    if "\nkind: Namespace\n" not in helm(plane, "template", "x", str(CHART), *args).stdout:
        kubectl(plane, "create", "namespace", ns)
    helm(plane, "install", f"ic-{stem(values)}", str(CHART), "--namespace", "default", *args)
    try:
        for name in (i["metadata"]["name"] for i in of_kind(render(values), "InferenceService")):
            predictor = get(plane, "inferenceservice", name, ns)["spec"]["predictor"]  # as KServe reads it
            [metric] = predictor["autoScaling"]["metrics"]
            scaled = wait_for(f"ScaledObject {ns}/{name}-predictor",
                              lambda: get(plane, "scaledobject", f"{name}-predictor", ns, check=False))
            owner = scaled["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"]) == ("InferenceService", name)
            spec = scaled["spec"]
            assert spec["scaleTargetRef"]["name"] == f"{name}-predictor"
            assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (predictor["minReplicas"],
                                                                          predictor["maxReplicas"])
            [trigger] = spec["triggers"]
            external = metric["external"]
            assert trigger["type"] == "prometheus"
            assert {k: trigger["metadata"][k] for k in ("serverAddress", "query", "threshold")} == {
                "serverAddress": external["metric"]["serverAddress"], "query": external["metric"]["query"],
                "threshold": external["target"]["value"]}
            assert f'namespace="{ns}"' in trigger["metadata"]["query"]
            assert get(plane, "hpa", f"{name}-predictor", ns, check=False) is None
    finally:
        helm(plane, "uninstall", f"ic-{stem(values)}", "--namespace", "default", check=False)


# --- the real pod spec, run -----------------------------------------------------------------------

RUN_CASES = [(None, "fashion-mnist"), ("grpc-v2-values.yaml", "fashion-mnist")]  # TorchServe, KServe-native


def runnable(spec: dict) -> dict:
    """The stored pod spec, with only what a local runner cannot run rewritten (each on purpose):
    none of the pvc:// pods here has any (automountServiceAccountToken is false, so no projected
    token volume; all env values are literal), so this only refuses what it would have to
    rewrite, rather than running something else silently."""
    spec = copy.deepcopy(spec)
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        refs = [e["name"] for e in c.get("env") or [] if "value" not in e]
        assert not refs, f"{c['name']}: env from references, which PodRunner cannot resolve: {refs}"
    kinds = {k for v in spec.get("volumes", []) for k in v if k != "name"}
    assert kinds <= {"emptyDir", "persistentVolumeClaim"}, kinds
    return spec


@pytest.mark.integration
@pytest.mark.parametrize("values, name", RUN_CASES, ids=["torchserve-v1", "kserve-native-grpc-v2"])
def test_real_pod_spec_runs_and_predicts(plane, releases, values, name, runtime_images, claim_root,
                                         inputs, tmp_path):
    objs = render(values)
    isvc = one(objs, "InferenceService", name)
    protocol = isvc["spec"]["predictor"]["model"]["protocolVersion"]
    spec = runnable(real_pod(plane, values, name)["spec"])
    claims = {v["persistentVolumeClaim"]["claimName"]: claim_root
              for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"image-classifier-models": claim_root}
    port = serving_port(spec["containers"][0], protocol)
    image, right = inputs[family(name)]
    with PodRunner(spec, f"real-{name}", claims=claims, extra_ports=tuple(sorted(metrics_ports(objs, isvc))),
                   max_probe_period=PROBE_PERIOD_S, log_dir=tmp_path / "logs") as pod:
        seconds = pod.wait_ready(READY_S)
        answers = call(pod, protocol, port, name, [image])
        print(f"\n{stem(values)}/{name}: ready in {seconds:.1f} s, {protocol} answer {answers[0]}")
    assert len(answers[0]) == 5 and next(iter(answers[0])) in right, answers


# --- KServe's validating webhook -----------------------------------------------------------------

def bad_isvc(plane, **changes) -> dict:
    isvc = copy.deepcopy(one(render(None), "InferenceService", "fashion-mnist"))
    isvc["metadata"] = {"name": changes.pop("name", "bad-isvc"), "namespace": PLAIN_NS,
                        "annotations": {**isvc["metadata"]["annotations"], **changes.pop("annotations", {})}}
    return isvc


@pytest.mark.integration
@pytest.mark.parametrize("change, message", [
    ({"name": "1-fashion-mnist"},
     'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: the '
     'InferenceService "1-fashion-mnist" is invalid: a InferenceService name must consist of lower case '
     "alphanumeric characters or '-', and must start with alphabetical character."),
    ({"annotations": {"serving.kserve.io/autoscalerClass": "bogus"}},
     'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: '
     "[bogus] is not a supported autoscaler class type"),
], ids=["name", "autoscaler-class"])
def test_validating_webhook_refuses(plane, kserve, change, message):
    obj = bad_isvc(plane, **copy.deepcopy(change))
    proc = kubectl(plane, "create", "-f", "-", stdin=json.dumps(obj), check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    gone = kubectl(plane, "get", "inferenceservice", obj["metadata"]["name"], "-n", PLAIN_NS, check=False)
    assert "NotFound" in gone.stderr

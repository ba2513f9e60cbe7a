"""Tier 3 of the real-Kubernetes issue: a Node. Debian's containerd 1.6 with runc and the CNI
plugins (bridge + host-local), the kubelet of the same Kubernetes release as the control plane
(one more component of the multi-call binary), registered with a client certificate of
`system:node:<name>` in `system:nodes` (no bootstrap tokens), configured per
../shared/notes/cluster-notes.md ("kubelet on these machines"): scripts/cluster/node.py.

Then the real thing end to end: our runtime images imported from podman into containerd, a
static hostPath PersistentVolume bound to the chart's claim and holding the archived layouts, the
chart's default values installed with KServe's real controller running; each InferenceService
must become Ready by its own status conditions and answer a prediction through its Service (the
API server's service proxy to the pod IP). A SIGKILLed TorchServe worker is replaced by TorchServe
without a restart; a hung frontend (SIGSTOP) is restarted by the kubelet's liveness probe. A real
Prometheus (upstream's, built from its Go module: Debian's has no Kubernetes discovery) discovers
the pods through this API server with kubernetes_sd_configs and scrapes them by their
prometheus.io annotations. Then the chart's v2 and grpc-v2 values answer on their protocols,
and its s3:// values are downloaded by KServe's storage initializer image from an S3 server (moto,
standing in for a cloud object store).

A missing package or a failed build fails here: nothing is skipped.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from scripts.cluster import build
from scripts.cluster import kserve as kserve_mod
from scripts.cluster import node as node_mod
from scripts.cluster import storage_initializer
from scripts.cluster.control_plane import ClusterError
from scripts.monitoring.prometheus import Prometheus
from scripts.serve.process import free_ports
from scripts.client import wire
from tests.cluster.helpers import CHART, CRDS, helm, kubectl, missing, wait_for
from tests.cluster.object_store import CREDENTIALS, MotoServer, tree
from tests.containers.test_pods import OBJECT_STORE, claim_root, family, inputs, runtime_images  # noqa: F401
from tests.deploy.kserve_pod import model_host, of_kind, one, render, serving_port

pytestmark = pytest.mark.integration  # a control plane, a kubelet and containerd

NS = "image-classifier"  # the chart's default namespace
CLAIM = "image-classifier-models"
READY_S = 600
MODELS = [i["metadata"]["name"] for i in of_kind(render(None), "InferenceService")]


def get(plane, kind: str, name: str, ns: str | None = None) -> dict | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    proc = kubectl(plane, *args, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def api(plane, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    """GET/POST on the API server as the admin (client certificate)."""
    ctx = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
    ctx.load_cert_chain(str(plane.pki / "admin.crt"), str(plane.pki / "admin.key"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(plane.server + path, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
        return json.loads(resp.read())


# --- the node --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(plane):
    for exe, package in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"),
                         ("gcc", "gcc"), ("ip", "iproute2")):
        if shutil.which(exe) is None:
            missing(f"{exe} is missing (Debian package `{package}`): run `bash scripts/setup.sh`")
    for plugin in ("bridge", "host-local", "loopback"):
        if not Path(node_mod.CNI_BIN_DIR, plugin).exists():
            missing(f"CNI plugin {plugin} missing in {node_mod.CNI_BIN_DIR} "
                    "(Debian package `containernetworking-plugins`)")
    assert build.binary("kubelet").exists(), "the multi-call binary has no kubelet"
    the_node = node_mod.Node(plane)
    lines: list[str] = []
    try:
        state = the_node.start(timeout=180, log=lines.append)
    except ClusterError as err:  # the exact reason is in the message
        the_node.stop(log=lambda *_: None)
        pytest.fail(f"the kubelet did not become a Ready node: {err}")
    print(f"\nnode: {'; '.join(lines)}; start {state['start_seconds']} s")
    try:
        yield the_node
    finally:
        the_node.stop(log=lambda *_: None)
        assert the_node.pid() is None and the_node.containerd.pid() is None
        assert not the_node.mounts()


def test_node_is_ready_with_containerd_and_the_same_release(node, plane):
    obj = get(plane, "node", node.name)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    info = obj["status"]["nodeInfo"]
    assert info["kubeletVersion"] == build.kubernetes_version()
    assert info["containerRuntimeVersion"].startswith("containerd://1.6."), info
    # the kernel tunables the kubelet insists on were set before it started
    for key, value in node_mod.KERNEL_TUNABLES.items():
        assert Path("/proc/sys", key).read_text().strip() == value, key
    # registered with its own certificate: the node authorizer let it create its Lease
    lease = wait_for("the node's Lease", lambda: get(plane, "lease", node.name, "kube-node-lease"), timeout=60)
    assert lease["spec"]["holderIdentity"] == node.name


def test_a_pod_runs_with_an_ip_of_the_bridge(node, plane):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pause-check", "namespace": "default"},
           "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "pause", "image": node_mod.PAUSE_IMAGE,
                                    "imagePullPolicy": "Never"}]}}
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(pod))
    t0 = time.monotonic()
    running = wait_for("pause pod Running", lambda: (get(plane, "pod", "pause-check", "default") or {})
                       .get("status", {}).get("phase") == "Running" and get(plane, "pod", "pause-check", "default"),
                       timeout=120)
    print(f"\npause pod Running in {time.monotonic() - t0:.1f} s, IP {running['status']['podIP']}")
    assert ipaddress.ip_address(running["status"]["podIP"]) in ipaddress.ip_network(node_mod.POD_CIDR)
    kubectl(plane, "delete", "pod", "pause-check", "-n", "default", "--wait=true", "--timeout=120s")


# --- our images, the claim, KServe and the chart -----------------------------------------------

@pytest.fixture(scope="module")
def node_images(node, runtime_images):  # noqa: F811
    seconds = {ref: round(node.containerd.import_podman_image(ref), 1)
               for ref in sorted(set(runtime_images.values()))}
    print(f"\nimages imported into containerd (0 = already there): {json.dumps(seconds)}")
    return runtime_images


@pytest.fixture(scope="module")
def volume(plane, node, claim_root):  # noqa: F811
    """A static hostPath PersistentVolume with the archived layouts, pre-bound to the chart's claim."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "image-classifier-models"},
          "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": str(claim_root), "type": "Directory"},
                   "claimRef": {"namespace": NS, "name": CLAIM}}}
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(pv))
    return claim_root


@pytest.fixture(scope="module")
def kserve(plane, crds):  # noqa: F811
    kserve_mod.build_manager()  # a BuildError fails the tests
    manager = kserve_mod.KServe(plane)
    manager.start(timeout=180, log=lambda *_: None)
    try:
        yield manager
    finally:
        manager.stop(log=lambda *_: None)


@pytest.fixture(scope="module")
def release(plane, node, node_images, volume, kserve):
    """The chart's default values (upload pod off: its busybox image is not in containerd and
    KServe's storage initializer reads the claim itself)."""
    out = helm(plane, "install", "ic", str(CHART), "--namespace", "default",
               "--set", "storage.uploadPod.enabled=false")
    assert "STATUS: deployed" in out.stdout, out.stdout
    pvc = wait_for("claim Bound", lambda: (get(plane, "pvc", CLAIM, NS) or {}).get("status", {})
                   .get("phase") == "Bound", timeout=60)
    assert pvc
    return time.monotonic()


def conditions(plane, name: str) -> dict:
    status = (get(plane, "inferenceservice", name, NS) or {}).get("status") or {}
    return {c["type"]: c for c in status.get("conditions") or []}


@pytest.mark.parametrize("name", MODELS)
def test_inferenceservice_becomes_ready_by_its_own_conditions(plane, release, name):
    def ready():
        found = conditions(plane, name)
        return found if found.get("Ready", {}).get("status") == "True" else None

    try:
        found = wait_for(f"InferenceService {NS}/{name} Ready", ready, timeout=READY_S, every=2)
    except AssertionError:
        pods = kubectl(plane, "get", "pods", "-n", NS, "-o", "wide", check=False).stdout
        events = kubectl(plane, "get", "events", "-n", NS, check=False).stdout[-3000:]
        raise AssertionError(f"{name} not Ready: {json.dumps(conditions(plane, name))[:2000]}\n"
                             f"{pods}\n{events}") from None
    print(f"\n{name}: Ready {time.monotonic() - release:.0f} s after helm install")
    assert found["PredictorReady"]["status"] == "True"


@pytest.mark.parametrize("name", MODELS)
def test_prediction_through_the_service(plane, release, inputs, name):  # noqa: F811
    conditions_now = conditions(plane, name)
    assert conditions_now.get("Ready", {}).get("status") == "True", conditions_now
    image, right = inputs[family(name)]
    path = (f"/api/v1/namespaces/{NS}/services/http:{name}-predictor:80/proxy"
            f"/v1/models/{name}:predict")
    t0 = time.monotonic()
    answer = api(plane, path, {"instances": [{"b64": base64.b64encode(image).decode()}]})
    print(f"\n{name}: v1 prediction through the service proxy in {time.monotonic() - t0:.2f} s: "
          f"{answer['predictions'][0]}")
    top = answer["predictions"][0]
    assert len(top) == 5 and next(iter(top)) in right, answer


@pytest.mark.parametrize("name", MODELS)
def test_kserves_ingress_routes_the_notes_host_to_the_rest_port(plane, release, name):
    """Once the predictor is Ready, KServe makes the Ingress and the URL (kube_ingress_reconciler.go):
    the host NOTES.txt prints (its domain template), to Service port 80, which targets the REST
    port. No ingress controller runs here, so the Ingress is checked as an object, not called."""
    isvc = one(render(None), "InferenceService", name)
    host = model_host(isvc, "example.com")
    ingress = wait_for(f"Ingress {NS}/{name}", lambda: get(plane, "ingress", name, NS), timeout=60)
    rules = {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ingress["spec"]["rules"]}
    assert rules[host] == {"name": f"{name}-predictor", "port": {"number": 80}}, rules
    assert get(plane, "inferenceservice", name, NS)["status"]["url"] == f"http://{host}"
    notes = helm(plane, "install", "--dry-run=client", "x", str(CHART)).stdout
    assert f"{name} (torchserve, v1): host {host}" in notes
    service = get(plane, "service", f"{name}-predictor", NS)
    port80 = next(p for p in service["spec"]["ports"] if p["port"] == 80)
    assert port80["targetPort"] == serving_port(predictor_pod(plane, name)["spec"]["containers"][0], "v1")


# --- the kubelet's probes ----------------------------------------------------------------------------

def predictor_pod(plane, name: str) -> dict:
    items = json.loads(kubectl(plane, "get", "pods", "-n", NS, "-l",
                               f"serving.kserve.io/inferenceservice={name}", "-o", "json").stdout)["items"]
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    return items[0]


def container_processes(container_id: str) -> dict[int, str]:
    """pid -> command line of every host process in the container's cgroup (containerd puts
    each container in <controller>/k8s.io/<id> with cgroupfs and cgroupsPerQOS false)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id not in (proc / "cgroup").read_text():
                continue
            out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return out


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def predict(plane, name: str, image: bytes) -> dict:
    path = f"/api/v1/namespaces/{NS}/services/http:{name}-predictor:80/proxy/v1/models/{name}:predict"
    return api(plane, path, {"instances": [{"b64": base64.b64encode(image).decode()}]})["predictions"][0]


@pytest.mark.parametrize("name", MODELS[:1])
def test_sigkilled_worker_is_replaced_and_the_pod_stays_ready(plane, release, inputs, name):  # noqa: F811
    """SIGKILL of TorchServe's Python worker: TorchServe's frontend starts a new worker within
    seconds, before the readiness probe (every 10 s) notices; the container is not restarted."""
    image, right = inputs[family(name)]
    pod = predictor_pod(plane, name)
    assert pod_ready(pod)
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    workers = [p for p, cmd in container_processes(cid).items() if "model_service_worker" in cmd]
    assert workers, container_processes(cid)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    new = wait_for("a new TorchServe worker", lambda: [p for p, cmd in container_processes(cid).items()
                                                       if "model_service_worker" in cmd and p not in workers],
                   timeout=60, every=0.2)
    replaced = time.monotonic() - t0
    answer = wait_for("a prediction after the worker restart", lambda: _try_predict(plane, name, image),
                      timeout=60)
    print(f"\n{name}: worker {workers} SIGKILLed, new worker {new} after {replaced:.1f} s, "
          f"answering after {time.monotonic() - t0:.1f} s")
    assert next(iter(answer)) in right
    pod = predictor_pod(plane, name)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == restarts


def _try_predict(plane, name, image):
    try:
        return predict(plane, name, image)
    except OSError:
        return None


@pytest.mark.parametrize("name", MODELS[:1])
def test_hung_frontend_is_restarted_by_the_liveness_probe(plane, release, inputs, name):  # noqa: F811
    """SIGSTOP of TorchServe's frontend (a hung server): the readiness probe takes the pod out of
    the Service, the liveness probe (/ping, 3 x 20 s) makes the kubelet restart the container,
    which loads the model again and answers."""
    image, right = inputs[family(name)]
    pod = predictor_pod(plane, name)
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    [java] = [p for p, cmd in container_processes(cid).items() if cmd.startswith("java ")]
    os.kill(java, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        wait_for("pod NotReady", lambda: not pod_ready(predictor_pod(plane, name)), timeout=90)
        not_ready = time.monotonic() - t0
        wait_for("container restarted", lambda: predictor_pod(plane, name)["status"]["containerStatuses"][0]
                 ["restartCount"] > restarts, timeout=150)
        restarted = time.monotonic() - t0
    finally:
        if java in container_processes(cid):
            os.kill(java, signal.SIGCONT)
    wait_for("pod Ready again", lambda: pod_ready(predictor_pod(plane, name)), timeout=READY_S, every=2)
    ready = time.monotonic() - t0
    events = kubectl(plane, "get", "events", "-n", NS, "-o", "json").stdout
    assert "failed liveness probe, will be restarted" in events
    answer = predict(plane, name, image)
    print(f"\n{name}: frontend stopped; NotReady after {not_ready:.0f} s, restarted by the liveness "
          f"probe after {restarted:.0f} s, Ready again after {ready:.0f} s; answer {answer}")
    assert next(iter(answer)) in right


# --- Prometheus: kubernetes_sd_configs against this API server ---------------------------------------

def test_debians_prometheus_has_no_kubernetes_discovery(tmp_path, plane):
    """Why Prometheus is built from its module: Debian's build leaves the Kubernetes discovery out.
    The day this fails, Debian's prometheus can do it and the build can go."""
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool is missing (Debian package `prometheus`)")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(node_mod.pod_scrape_config(plane, [NS])))
    proc = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "field kubernetes_sd_configs not found in type config.ScrapeConfig" in proc.stdout + proc.stderr


class UpstreamPrometheus(Prometheus):
    def __init__(self, exe: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.exe = exe

    def command(self) -> list[str]:
        return [str(self.exe), *super().command()[1:]]


def test_prometheus_discovers_and_scrapes_the_pods_by_their_annotations(plane, release, tmp_path):
    try:
        exe = node_mod.build_prometheus(log=lambda *_: None)
    except ClusterError as err:  # a failed build fails
        pytest.fail(str(err))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(node_mod.pod_scrape_config(plane, [NS])))
    prom = UpstreamPrometheus(exe, tmp_path, config, free_ports(1)[0])
    prom.start(timeout=60)
    try:
        t0 = time.monotonic()
        up = wait_for("every predictor pod scraped", lambda: (
            lambda r: r if len(r) == len(MODELS) else None)(prom.query('up{job="kubernetes-pods"} == 1')),
            timeout=90)
        seconds = time.monotonic() - t0
        series = prom.query('count by (inferenceservice) ({job="kubernetes-pods", __name__=~"ts_.+"})')
    finally:
        prom.stop()
    pods = {p["metadata"]["name"]: p for p in json.loads(kubectl(plane, "get", "pods", "-n", NS, "-o", "json").stdout)["items"]}
    print(f"\nprometheus: {len(up)} pods discovered and up after {seconds:.1f} s; "
          f"TorchServe series per InferenceService {[(s['metric'].get('inferenceservice'), s['value'][1]) for s in series]}")
    for sample in up:
        labels = sample["metric"]
        pod = pods[labels["pod"]]
        annotations = pod["metadata"]["annotations"]
        assert labels["instance"] == f"{pod['status']['podIP']}:{annotations['prometheus.io/port']}"
        assert labels["namespace"] == NS and labels["inferenceservice"] in MODELS
    assert {s["metric"]["inferenceservice"] for s in series} == set(MODELS)


# --- the other protocols: the chart's v2 and grpc-v2 values, one release at a time -------------------

PROTOCOL_VALUES = ["v2-values.yaml", "grpc-v2-values.yaml"]
_installed = ["ic"]  # releases in the cluster (2 CPUs: one release's pods at a time)


def oip_rest(plane, ns: str, name: str, image: bytes) -> dict:
    """OIP v2 REST through the Service (API server's service proxy), BYTES base64 as
    scripts/client/wire.py sends it; top-k labels -> probabilities."""
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    path = f"/api/v1/namespaces/{ns}/services/http:{name}-predictor:80/proxy/v2/models/{name}/infer"
    out = {o["name"]: o for o in api(plane, path, body)["outputs"]}
    return dict(zip(out["labels"]["data"], out["probabilities"]["data"]))


@pytest.mark.parametrize("values", PROTOCOL_VALUES, ids=[v.removesuffix("-values.yaml") for v in PROTOCOL_VALUES])
def test_every_declared_protocol_answers(plane, node, node_images, kserve, claim_root, inputs, values):  # noqa: F811
    ns = f"ic-{values.removesuffix('-values.yaml')}"
    while _installed:  # free the node's CPUs
        helm(plane, "uninstall", _installed.pop(), "--namespace", "default", "--wait", "--timeout", "180s",
             check=False)
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"models-{ns}"},
          "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": str(claim_root), "type": "Directory"},
                   "claimRef": {"namespace": ns, "name": CLAIM}}}
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(pv))
    t0 = time.monotonic()
    helm(plane, "install", ns, str(CHART), "--namespace", "default", "--set", f"namespace.name={ns}",
         "--set", "storage.uploadPod.enabled=false", "-f", str(CHART / "ci" / values))
    _installed.append(ns)
    for isvc in of_kind(render(values), "InferenceService"):
        name = isvc["metadata"]["name"]
        protocol = isvc["spec"]["predictor"]["model"]["protocolVersion"]

        wait_until_ready(plane, ns, name)
        image, right = inputs[family(name)]
        if protocol == "grpc-v2":
            # gRPC cannot go through the API server's HTTP/1.1 proxy and no kube-proxy makes the
            # ClusterIP reachable: the Service's endpoint (pod IP, its h2c port) from the node.
            slices = json.loads(kubectl(plane, "get", "endpointslices", "-n", ns, "-l",
                                        f"kubernetes.io/service-name={name}-predictor", "-o", "json").stdout)["items"]
            ip = slices[0]["endpoints"][0]["addresses"][0]
            pod = predictor_pod_in(plane, ns, name)
            port = serving_port(pod["spec"]["containers"][0], protocol)
            answer = wire.grpc_oip(f"{ip}:{port}", name, [image])[0]
        else:
            answer = oip_rest(plane, ns, name, image)
        print(f"\n{ns}/{name}: Ready {time.monotonic() - t0:.0f} s after helm install; {protocol}: {answer}")
        assert next(iter(sorted(answer, key=answer.get, reverse=True))) in right, answer


def wait_until_ready(plane, ns: str, name: str, init_container: str | None = None) -> None:
    """Until the InferenceService's Ready condition is True; else fail with its pods, events and
    (if named) an init container's log."""
    def ready():
        status = (get(plane, "inferenceservice", name, ns) or {}).get("status") or {}
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])

    try:
        wait_for(f"{ns}/{name} Ready", ready, timeout=READY_S, every=2)
    except AssertionError:
        pods = kubectl(plane, "get", "pods", "-n", ns, "-o", "wide", check=False).stdout
        events = kubectl(plane, "get", "events", "-n", ns, check=False).stdout[-3000:]
        logs = kubectl(plane, "logs", "-n", ns, "-l", f"serving.kserve.io/inferenceservice={name}",
                       "-c", init_container, check=False) if init_container else None
        raise AssertionError(f"{ns}/{name} not Ready:\n{pods}\n{events}"
                             + (f"\n{logs.stdout}{logs.stderr}" if logs else "")) from None


def predictor_pod_in(plane, ns: str, name: str) -> dict:
    return json.loads(kubectl(plane, "get", "pods", "-n", ns, "-l",
                              f"serving.kserve.io/inferenceservice={name}", "-o", "json").stdout)["items"][0]


# --- s3:// models: KServe's storage initializer image on the node -----------------------------------

S3_VALUES = "s3-servicemonitor-values.yaml"


def test_s3_models_are_downloaded_by_kserves_storage_initializer(plane, node, node_images, kserve, claim_root,  # noqa: F811
                                                                 inputs, tmp_path):
    """The chart's s3:// values on the node, in a namespace of its own that enforces Pod Security
    "restricted": KServe's webhook injects its storage initializer (the image built from PyPI's
    kserve-storage, scripts/cluster/storage_initializer.py) under the chart's ClusterStorageContainer;
    it downloads each layout with the credentials of the chart's Secret; the models become Ready and
    answer. The object store is moto (tests/cluster/object_store.py), standing in for a cloud one, on the
    pods' bridge gateway address (pods cannot reach the host's loopback)."""
    ns = "ic-s3"
    while _installed:  # free the node's CPUs
        helm(plane, "uninstall", _installed.pop(), "--namespace", "default", "--wait", "--timeout", "180s",
             check=False)
    image = storage_initializer.build()
    print(f"\nstorage initializer into containerd: {node.containerd.import_podman_image(image):.1f} s")
    gateway = str(next(ipaddress.ip_network(node_mod.POD_CIDR).hosts()))
    bridge = subprocess.run(["ip", "-4", "-o", "addr", "show", node_mod.CNI_BRIDGE], capture_output=True, text=True)
    assert gateway in bridge.stdout, f"no {node_mod.CNI_BRIDGE} with {gateway} (a pod must have run): {bridge}"
    server = MotoServer(tmp_path, host=gateway).start(timeout=60)
    try:
        isvcs = of_kind(render(S3_VALUES), "InferenceService")
        for isvc in isvcs:
            bucket, prefix = isvc["spec"]["predictor"]["model"]["storageUri"].removeprefix("s3://").split("/", 1)
            server.upload(bucket, prefix, tree(claim_root / OBJECT_STORE / bucket / prefix))
        t0 = time.monotonic()
        s3 = "storage.credentials.s3"
        helm(plane, "install", ns, str(CHART), "--namespace", "default", "-f", str(CHART / "ci" / S3_VALUES),
             "--set", f"namespace.name={ns}", "--set", "namespace.create=true",
             "--set", f"{s3}.endpoint={gateway}:{server.port}", "--set", f"{s3}.useHttps=false",
             "--set", f"{s3}.verifySSL=false", "--set", f"{s3}.accessKeyId={CREDENTIALS['AWS_ACCESS_KEY_ID']}",
             "--set", f"{s3}.secretAccessKey={CREDENTIALS['AWS_SECRET_ACCESS_KEY']}")
        _installed.append(ns)
        labels = get(plane, "namespace", ns)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        for isvc in isvcs:
            name = isvc["metadata"]["name"]

            wait_until_ready(plane, ns, name, init_container="storage-initializer")
            pod = predictor_pod_in(plane, ns, name)
            [init] = pod["status"]["initContainerStatuses"]
            assert (init["name"], init["state"]["terminated"]["exitCode"]) == ("storage-initializer", 0)
            assert pod["spec"]["initContainers"][0]["securityContext"]["runAsNonRoot"] is True
            image_bytes, right = inputs[family(name)]
            path = f"/api/v1/namespaces/{ns}/services/http:{name}-predictor:80/proxy/v1/models/{name}:predict"
            answer = api(plane, path, {"instances": [{"b64": base64.b64encode(image_bytes).decode()}]})
            top = answer["predictions"][0]
            print(f"\n{ns}/{name}: Ready {time.monotonic() - t0:.0f} s after helm install, downloaded from s3; {top}")
            assert next(iter(top)) in right, answer
    finally:
        server.stop()

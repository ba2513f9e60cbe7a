"""The rendered chart, run locally. For an InferenceService of a values file, its ServingRuntime's own
container (command, args, env, probes, after KServe's merge with the InferenceService) runs over a
storage layout built by the real archiver and copied from where the storageUri points, as KServe's
storage initializer does. The check waits for the manifest's readiness probe (run for real), runs
the liveness probe, calls the model on the protocol the InferenceService declares at the port KServe
routes that protocol to, and scrapes /metrics where the scrape annotation and PodMonitor say.

No cluster exists here: only KServe's controller is emulated (tests/kserve_pod.py); the servers,
probes and clients are the real ones. The laptop rewrites are listed in kserve_pod.Translation:
mount paths → temp dirs, manifest ports → free loopback ports, 0.0.0.0 → 127.0.0.1 for binding
only (that routed ports do bind 0.0.0.0 in the pod is asserted statically first). Mutated
manifests (wrong port, wrong storage path, wrong env) must fail the same check.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image
from skimage import data as skdata

from model import checkpoint
from scripts import archive, clients, k8s_render
from tests.conftest import IMAGENET_NAME, MODEL_NAME, png_bytes
from tests.kserve_pod import (LocalPod, PodCheckError, Translation, bind_addresses, knative_container_errors,
                              merged_container, one, runtime_of, serving_port, storage_initializer)
from scripts.settings import KSERVE_MODEL_MOUNT

REPO = Path(__file__).resolve().parents[1]
CI_VALUES = REPO / "charts" / "image-classifier" / "ci"
VALUES_FILES = [None, *sorted(p.name for p in CI_VALUES.glob("*.yaml"))]
READY_TIMEOUT = 120

# One case per (runtime, protocol) the chart offers: TorchServe v1 and v2 REST, the KServe-native
# runtime's v2 REST and standard OIP gRPC.
CASES = [(None, "fashion-mnist"), ("v2-values.yaml", "fashion-mnist"), ("v2-values.yaml", "imagenet"),
         ("grpc-v2-values.yaml", "fashion-mnist"), ("knative-canary-values.yaml", "imagenet-grpc")]


def render(values: str | None) -> list[dict]:
    args = ["-f", str(CI_VALUES / values)] if values else []
    return [obj for _, obj in k8s_render.split_documents(k8s_render.helm_template(*args))]


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def metrics_ports(objs, isvc: dict) -> set[int]:
    """Ports Prometheus scrapes on this model's pods: the prometheus.io/port annotation and every
    PodMonitor whose selector matches the predictor's labels."""
    predictor = isvc["spec"]["predictor"]
    labels = predictor.get("labels", {})
    ports = set()
    if "prometheus.io/port" in predictor.get("annotations", {}):
        ports.add(int(predictor["annotations"]["prometheus.io/port"]))
    monitors = of_kind(objs, "PodMonitor")
    matching = [m for m in monitors if m["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    if monitors and not matching:
        raise PodCheckError(f"no PodMonitor selects {isvc['metadata']['name']}'s pods (labels {labels})")
    ports |= {e["portNumber"] for m in matching for e in m["spec"]["podMetricsEndpoints"]}
    return ports


def check_routed_ports_bind_every_interface(objs, isvc: dict) -> None:
    """In a pod, what a Service or Prometheus reaches must listen on 0.0.0.0 (the pod IP); the
    local run rewrites 0.0.0.0 to 127.0.0.1, so this is checked on the manifest as rendered."""
    container = merged_container(runtime_of(objs, isvc), isvc)
    binds = bind_addresses(container)
    routed = {p["containerPort"] for p in container.get("ports", [])} | metrics_ports(objs, isvc)
    wrong = {p: binds.get(p, "nothing") for p in sorted(routed) if binds.get(p) != "0.0.0.0"}
    if wrong:
        raise PodCheckError(f"{isvc['metadata']['name']}: routed ports not bound on 0.0.0.0: {wrong} "
                            f"(listeners: {binds})")


def call(protocol: str, port: int, model: str, image: bytes) -> dict:
    try:
        if protocol == "v1":
            return clients.rest_v1(f"http://127.0.0.1:{port}", model, [image])[0]
        if protocol == "v2":
            return clients.rest_v2(f"http://127.0.0.1:{port}", model, [image])[0]
        if protocol == "grpc-v2":
            return clients.grpc_oip(f"127.0.0.1:{port}", model, [image])[0]
    except clients.PredictError as e:
        raise PodCheckError(f"{protocol} call to {model} on the routed port failed: {e}") from None
    raise PodCheckError(f"unknown protocolVersion {protocol}")


def run_predictor(objs, name: str, claim_root: Path, run_dir: Path, image: bytes) -> dict:
    """Run InferenceService `name` as its pod would and return the model's answer to `image`."""
    isvc = one(objs, "InferenceService", name)
    model = isvc["spec"]["predictor"]["model"]
    container = merged_container(runtime_of(objs, isvc), isvc)
    # What the storage initializer does: the claim's path → the pod's /mnt/models. Every rendered
    # claim holds what the upload step copied (claim_root).
    claims = {c["metadata"]["name"]: claim_root for c in of_kind(objs, "PersistentVolumeClaim")}
    models_dir = storage_initializer(model["storageUri"], claims, run_dir / "mnt-models")
    paths = {KSERVE_MODEL_MOUNT: models_dir}
    paths |= {m["mountPath"]: run_dir / "volumes" / m["name"] for m in container.get("volumeMounts", [])}
    t = Translation(paths)
    pod = LocalPod(container, t, run_dir)
    pod.start(timeout=READY_TIMEOUT)
    try:
        ok, why = pod.probe("livenessProbe")
        if not ok:
            raise PodCheckError(f"liveness probe fails on a ready container: {why}")
        knative = isvc["metadata"]["annotations"].get("serving.kserve.io/deploymentMode") == "Knative"
        answer = call(model["protocolVersion"],
                      t.port(serving_port(container, model["protocolVersion"], knative)), name, image)
        for port in sorted(metrics_ports(objs, isvc)):
            url = f"http://127.0.0.1:{t.port(port)}/metrics"
            try:
                r = requests.get(url, timeout=5)
            except requests.RequestException as e:
                raise PodCheckError(f"scrape of declared metrics port {port}: {type(e).__name__}") from None
            if r.status_code != 200 or "# TYPE " not in r.text:
                raise PodCheckError(f"scrape of declared metrics port {port}: HTTP {r.status_code}")
    finally:
        pod.stop()
    return answer


# --- fixtures -----------------------------------------------------------------------------------------

def family(name: str) -> str:
    """Which trained model an InferenceService of the values files serves (imagenet-grpc is the
    ImageNet classifier on the gRPC protocol)."""
    return IMAGENET_NAME if name.startswith(IMAGENET_NAME) else MODEL_NAME


@pytest.fixture(scope="module")
def claim_root(trained, imagenet_checkpoint, tmp_path_factory) -> Path:
    """The model claim after the upload step NOTES.txt describes: for every InferenceService of
    the values files, `python -m scripts.archive --model-name <name> --out build/k8s/<path>` then
    `kubectl cp build/k8s/<path> <pod>:/models/<path>`, <path> being its storageUri's path; the
    real archiver builds them."""
    root = tmp_path_factory.mktemp("claim")
    checkpoints = {MODEL_NAME: trained, IMAGENET_NAME: imagenet_checkpoint}
    layouts = {}
    for values in VALUES_FILES:
        for isvc in of_kind(render(values), "InferenceService"):
            uri = isvc["spec"]["predictor"]["model"]["storageUri"]
            if uri.startswith("pvc://"):
                layouts[uri.split("/", 3)[3]] = isvc["metadata"]["name"]
    for path, name in sorted(layouts.items()):
        archive.archive(checkpoints[family(name)], root / path, name)
    return root


@pytest.fixture(scope="module")
def inputs(samples, trained, imagenet_checkpoint) -> dict[str, tuple[bytes, set[str], str | None]]:
    """Model family → (image, the model's labels, the image's true label if known)."""
    out_dir, listed = samples
    trouser = next(s for s in listed if s["label"] == "Trouser")
    return {
        MODEL_NAME: ((out_dir / trouser["file"]).read_bytes(), set(checkpoint.load(trained)["labels"]), "Trouser"),
        IMAGENET_NAME: (png_bytes(Image.fromarray(skdata.chelsea())),
                        set(checkpoint.load(imagenet_checkpoint)["labels"]), None),
    }


# --- static: what the cluster routes to binds every interface -----------------------------------------

@pytest.mark.parametrize("values", VALUES_FILES)
def test_routed_ports_bind_every_interface(values):
    objs = render(values)
    for isvc in of_kind(objs, "InferenceService"):
        check_routed_ports_bind_every_interface(objs, isvc)


def knative_objs(tmp_path: Path) -> list[dict]:
    """Knative mode with every (runtime, protocol) pair the chart allows."""
    values = tmp_path / "knative-all.yaml"
    models = [{"name": f"m-{rt}-{proto}", "runtime": rt, "protocol": proto,
               "storageUri": f"pvc://image-classifier-models/m-{rt}-{proto}"}
              for rt, proto in [("torchserve", "v1"), ("torchserve", "v2"), ("kserve-native", "v1"),
                                ("kserve-native", "v2"), ("kserve-native", "grpc-v2")]]
    values.write_text(yaml.safe_dump({"deploymentMode": "Knative", "models": models,
                                      "autoscaling": {"metric": "concurrency", "target": 4}}))
    return render(str(values))


def test_knative_accepts_every_predictor_container(tmp_path):
    """Knative's webhook refuses a container with two ports; KServe merges the InferenceService's
    ports into the runtime's, so the one port Knative routes must match each model's protocol."""
    checked = 0
    for objs in (knative_objs(tmp_path), render("knative-canary-values.yaml")):
        for isvc in of_kind(objs, "InferenceService"):
            container = merged_container(runtime_of(objs, isvc), isvc)
            assert knative_container_errors(container) == [], isvc["metadata"]["name"]
            protocol = isvc["spec"]["predictor"]["model"]["protocolVersion"]
            expected = {"grpc-v2": 8081}.get(protocol, 8080)
            assert serving_port(container, protocol, knative=True) == expected, isvc["metadata"]["name"]
            checked += 1
    assert checked == 7


def test_knative_rules_refuse_what_the_webhook_refuses(tmp_path):
    objs = copy.deepcopy(knative_objs(tmp_path))
    grpc = one(objs, "InferenceService", "m-kserve-native-grpc-v2")
    runtime = runtime_of(objs, grpc)
    # the defect this chart once had: the runtime's http1 port merged with the model's h2c port
    runtime["spec"]["containers"][0]["ports"] = [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    container = merged_container(runtime, grpc)
    assert knative_container_errors(container) == ["more than one container port: [8080, 8081]"]
    with pytest.raises(PodCheckError, match="Knative refuses the container"):
        serving_port(container, "grpc-v2", knative=True)
    container = {"ports": [{"name": "metrics", "containerPort": 9090}],
                 "readinessProbe": {"httpGet": {"port": "http1", "path": "/"}}}
    assert knative_container_errors(container) == [
        "port name 'metrics' is not one of h2c, http1", "port 9090 is reserved for queue-proxy",
        "readinessProbe port 'http1' does not match the container port's name"]
    # a REST model whose one port is h2c would get HTTP/2 it does not speak
    with pytest.raises(PodCheckError, match="Knative routes v1 to port 8081 named 'h2c'"):
        serving_port({"ports": [{"name": "h2c", "containerPort": 8081}]}, "v1", knative=True)


def test_a_loopback_listener_on_a_routed_port_is_refused():
    objs = copy.deepcopy(render(None))
    env = one(objs, "ServingRuntime", "image-classifier-torchserve")["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "TS_METRICS_ADDRESS")["value"] = "http://127.0.0.1:8082"
    with pytest.raises(PodCheckError, match=r"not bound on 0.0.0.0: \{8082: '127.0.0.1'\}"):
        check_routed_ports_bind_every_interface(objs, one(objs, "InferenceService", "fashion-mnist"))


def test_storage_initializer_emulation_refuses_a_missing_path(tmp_path):
    (tmp_path / "claim" / "fashion-mnist").mkdir(parents=True)
    claims = {"image-classifier-models": tmp_path / "claim"}
    with pytest.raises(PodCheckError, match="does not exist in claim"):
        storage_initializer("pvc://image-classifier-models/fashion-mnist-v2", claims, tmp_path / "a")
    with pytest.raises(PodCheckError, match="no PersistentVolumeClaim 'other'"):
        storage_initializer("pvc://other/fashion-mnist", claims, tmp_path / "b")
    assert storage_initializer("pvc://image-classifier-models/fashion-mnist", claims, tmp_path / "c").is_dir()


def test_translation_rewrites_only_paths_ports_and_the_bind_address(tmp_path):
    t = Translation({"/mnt/models": tmp_path / "m", "/tmp": tmp_path / "t"})
    env = t.env([{"name": "TS_INFERENCE_ADDRESS", "value": "http://0.0.0.0:8080"},
                 {"name": "TS_MANAGEMENT_ADDRESS", "value": "http://127.0.0.1:8081"},
                 {"name": "TS_GRPC_INFERENCE_PORT", "value": "7070"},
                 {"name": "TMPDIR", "value": "/tmp"}, {"name": "OTHER", "value": "/tmpfoo"}])
    assert env == {"TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{t.ports[8080]}",
                   "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{t.ports[8081]}",
                   "TS_GRPC_INFERENCE_PORT": str(t.ports[7070]), "TMPDIR": str(tmp_path / "t"), "OTHER": "/tmpfoo"}
    assert len(set(t.ports.values())) == 3 and not set(t.ports.values()) & {8080, 8081, 7070}
    argv = t.argv(["python", "-m", "x", "--model-store", "/mnt/models/model-store", "--host", "0.0.0.0",
                   "--http-port", "8080", "--workers", "8080"])
    assert argv == ["python", "-m", "x", "--model-store", str(tmp_path / "m" / "model-store"), "--host",
                    "127.0.0.1", "--http-port", str(t.ports[8080]), "--workers", "8080"]


# --- the rendered runtimes, run -------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("values, name", CASES, ids=[f"{v or 'default'}-{n}" for v, n in CASES])
def test_rendered_runtime_serves_the_model(values, name, claim_root, inputs, tmp_path):
    objs = render(values)
    image, labels, truth = inputs[family(name)]
    answer = run_predictor(objs, name, claim_root, tmp_path, image)
    assert len(answer) == 5 and set(answer) <= labels, answer
    probabilities = list(answer.values())
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5
    if truth:
        assert truth in answer, answer


def _torchserve_env(objs, name: str) -> dict:
    env = one(objs, "ServingRuntime", "image-classifier-torchserve")["spec"]["containers"][0]["env"]
    return next(e for e in env if e["name"] == name)


@pytest.mark.integration
def test_a_wrong_container_port_fails_the_check(claim_root, inputs, tmp_path):
    """KServe routes REST to http1: a containerPort TorchServe does not listen on is unreachable."""
    objs = copy.deepcopy(render(None))
    ports = one(objs, "ServingRuntime", "image-classifier-torchserve")["spec"]["containers"][0]["ports"]
    next(p for p in ports if p["name"] == "http1")["containerPort"] = 8088
    with pytest.raises(PodCheckError, match="v1 call to fashion-mnist on the routed port failed"):
        run_predictor(objs, MODEL_NAME, claim_root, tmp_path, inputs[MODEL_NAME][0])


@pytest.mark.integration
def test_a_wrong_storage_path_fails_the_check(claim_root, inputs, tmp_path):
    """A storageUri one level too deep (the model-store folder): /mnt/models has no
    config/config.properties, so the runtime's command cannot start."""
    objs = copy.deepcopy(render(None))
    model = one(objs, "InferenceService", MODEL_NAME)["spec"]["predictor"]["model"]
    model["storageUri"] = "pvc://image-classifier-models/fashion-mnist/model-store"
    with pytest.raises(PodCheckError, match="exited with|not ready after"):
        run_predictor(objs, MODEL_NAME, claim_root, tmp_path, inputs[MODEL_NAME][0])


@pytest.mark.integration
def test_a_wrong_metrics_env_fails_the_check(claim_root, inputs, tmp_path):
    """TS_METRICS_ADDRESS on another port than the one the PodMonitor and annotation scrape."""
    objs = copy.deepcopy(render(None))
    _torchserve_env(objs, "TS_METRICS_ADDRESS")["value"] = "http://0.0.0.0:8083"
    with pytest.raises(PodCheckError, match="scrape of declared metrics port 8082: ConnectionError"):
        run_predictor(objs, MODEL_NAME, claim_root, tmp_path, inputs[MODEL_NAME][0])

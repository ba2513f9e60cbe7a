"""The Helm chart (charts/image-classifier) and the manifests rendered from it (k8s/).

There is no Kubernetes cluster here and none is ever contacted: everything is checked offline
with the real tools. `helm lint --strict` and `helm template` (helm v4 from scripts/setup.sh,
in .tools/bin) render the chart for several values files; the important fields are asserted
(ports, env, probes, securityContext, labels); the values schema must refuse bad values;
core kinds are validated strictly by kubernetes-validate's bundled schemas for Kubernetes 1.30
and 1.35; KServe and prometheus-operator objects strictly against the real CRDs'
openAPIV3Schema (../shared/crds or CRDS_DIR, never copied into the repo). The TorchServe
readiness probe's own command is run against a real TorchServe while it starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from scripts.serve import archive

from scripts.deploy import k8s_render

from scripts.deploy import k8s_validate
from scripts.runtime.server import get_args_parser
from scripts.cluster import kserve as kserve_mod
from handlers import exporter
from handlers.auth import TokenFile
from handlers.settings import AuthSettings, RequestLimits, ServingSettings
from scripts.serve.settings import KSERVE_MODEL_MOUNT, loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import IMAGENET_NAME
from tests.deploy.kserve_pod import (KSERVE_AGGREGATION_PORT, KSERVE_DOMAIN_TEMPLATE, STORAGE_INITIALIZER_IMAGE, aggregated_metrics_port,
                              gateway_target_port, knative_pod_errors, metrics_ports, model_host, predictor_pod,
                              serving_port)

pytestmark = pytest.mark.integration  # helm renders the chart for every test

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "image-classifier"
CI_VALUES = CHART / "ci"
VALUES_FILES = sorted(p.name for p in CI_VALUES.glob("*.yaml"))
KUBE_VERSIONS = ("1.30.0", "1.35.0")
RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
CRDS = Path(os.environ.get("CRDS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "crds")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([k8s_render.find_tool("helm"), *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def set_flag(kv: str) -> list[str]:
    """--set, or --set-literal for a Go template value (--set parses its dots and braces)."""
    return ["--set-literal" if "{{" in kv else "--set", kv]


@lru_cache(maxsize=None)
def render(values: str | None = None, *sets: str) -> tuple[dict, ...]:
    args = ["-f", str(CI_VALUES / values)] if values else []
    for s in sets:
        args += set_flag(s)
    return tuple(obj for _, obj in k8s_render.split_documents(k8s_render.helm_template(*args)))


def refused(*args: str) -> str:
    """helm's error for values the chart must refuse."""
    proc = helm("template", "t", str(CHART), *args, check=False)
    assert proc.returncode != 0, f"helm accepted {args}"
    return proc.stderr


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def runtime_container(objs, runtime: str) -> dict:
    return one(objs, "ServingRuntime", f"image-classifier-{runtime}")["spec"]["containers"][0]


def isvc(objs, name: str) -> dict:
    return one(objs, "InferenceService", name)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def ports_of(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def all_containers(objs):
    for o in objs:
        if o["kind"] == "ServingRuntime":
            yield o, o["spec"]["containers"], o["spec"].get("volumes", [])
        elif o["kind"] == "Pod":
            yield o, o["spec"]["containers"], o["spec"].get("volumes", [])


# --- helm lint and rendering -------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_helm_lint_strict(values):
    args = ["-f", str(CI_VALUES / values)] if values else []
    proc = helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in proc.stdout


CLUSTER_SCOPED = {"Namespace", "ClusterStorageContainer"}


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_every_object_has_the_recommended_labels_and_namespace(values):
    objs = render(values)
    assert objs
    for o in objs:
        labels = o["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED_LABELS if k not in labels]
        assert not missing, f"{o['kind']}/{o['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "image-classifier"
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"]
        else:
            assert o["metadata"]["namespace"] == "image-classifier"


def notes(*args: str) -> str:
    """NOTES.txt, rendered by a client-side dry run (no cluster)."""
    return helm("install", "--dry-run=client", "image-classifier", str(CHART), *args).stdout.split("NOTES:", 1)[1]


def test_notes_tell_how_to_call_the_models():
    """NOTES.txt names the Host header per model, REST v1/v2 calls and gRPC."""
    text = notes("-f", str(CI_VALUES / "knative-canary-values.yaml"))
    assert 'curl -H "Host: fashion-mnist.image-classifier.example.com"' in text
    assert "/v1/models/fashion-mnist:predict" in text and "/v2/models/fashion-mnist/infer" in text
    # Knative routes the grpc-v2 model's single h2c port through the gateway, on its host
    assert "-authority imagenet-grpc.image-classifier.example.com <gateway host>:80" in text
    notes_text = text  # noqa: F841 (used below)
    # each layout is archived under the model's name and copied to its storageUri's path
    assert "--model-name fashion-mnist --out build/k8s/fashion-mnist-v2" in notes_text
    assert "kubectl cp build/k8s/fashion-mnist-v2 image-classifier/image-classifier-model-upload:" \
           "/models/fashion-mnist-v2" in notes_text
    assert "--model-name imagenet-grpc --out build/k8s/imagenet-grpc" in notes_text
    assert "management API is never exposed" in notes_text


@pytest.mark.parametrize("values, sets", [
    (None, ()), ("grpc-v2-values.yaml", ()), ("knative-canary-values.yaml", ()),
    (None, ("ingress.domain=models.example.org", "ingress.domainTemplate={{ .Name }}.{{ .Namespace }}.{{ .IngressDomain }}")),
], ids=["standard", "grpc-v2", "knative", "own-template"])
def test_notes_hosts_are_the_ones_kserve_makes(values, sets):
    """KServe v0.20 names Standard-mode hosts by its domain template (default
    <name>-<namespace>.<domain>), Knative-mode hosts <name>.<namespace>.<domain>
    (tests/deploy/kserve_pod.py model_host; tests/cluster/test_kserve_controller.py reads the real Ingress)."""
    args = [*(["-f", str(CI_VALUES / values)] if values else []), *(a for kv in sets for a in set_flag(kv))]
    text = notes(*args)
    objs = render(values, *sets)
    values_doc = yaml.safe_load(helm("show", "values", str(CHART)).stdout)["ingress"]
    domain = next((kv.split("=", 1)[1] for kv in sets if kv.startswith("ingress.domain=")), values_doc["domain"])
    template = next((kv.split("=", 1)[1] for kv in sets if kv.startswith("ingress.domainTemplate=")),
                    values_doc["domainTemplate"])
    assert values_doc["domainTemplate"] == KSERVE_DOMAIN_TEMPLATE  # the chart's default is KServe's
    for i in of_kind(objs, "InferenceService"):
        host = model_host(i, domain, template)
        assert f"{i['metadata']['name']} ({i['spec']['predictor']['model']['runtime'].removeprefix('image-classifier-')}" \
               f", {i['spec']['predictor']['model']['protocolVersion']}): host {host}" in text, text
    assert "<model>.<namespace>" not in text


def test_notes_name_the_metrics_ports_and_the_token_when_auth_is_on():
    ports = yaml.safe_load((CHART / "values.yaml").read_text())["ports"]
    text = notes()
    assert f"port {ports['torchserve']['metrics']} (TorchServe) or {ports['kserveNative']['metrics']} (KServe-native)" in text
    assert "Authorization" not in text
    text = notes("-f", str(CI_VALUES / "auth-values.yaml"))
    assert 'add -H "Authorization: Bearer $TOKEN"' in text
    assert "get secret image-classifier-tokens -o jsonpath='{.data.tokens}' | base64 -d" in text


def test_notes_promise_no_grpc_through_kserves_ingress():
    """KServe's Ingress sends everything to Service port 80, the REST port: Standard-mode NOTES
    give the in-cluster h2c address for gRPC (tests/deploy/kserve_pod.py gateway_target_port)."""
    text = notes("-f", str(CI_VALUES / "grpc-v2-values.yaml"))
    assert "--grpc-target fashion-mnist-predictor.image-classifier.svc.cluster.local:8081" in text
    assert "-authority" not in text


# --- the TorchServe runtime: one source of truth with handlers/settings.py ---------------------------------

def test_torchserve_runtime_runs_torchserve_directly_on_the_storage_layout():
    c = runtime_container(render(), "torchserve")
    assert c["image"] == "registry.example.com/image-classifier/torchserve:0.1.0"  # docker/Dockerfile.torchserve
    # tini as PID 1, passing SIGTERM to the process group (tests/containers/test_pods.py measures the
    # shutdown); TorchServe runs as the metrics exporter's child (handlers/exporter.py)
    argv = runtime_argv(c)
    assert argv[:8] == ["tini", "-g", "--", "env", "PYTHONPATH=/opt/exporter", "python", "-m", "handlers.exporter"]
    assert argv[argv.index("--", 3) + 1:] == ["torchserve", "--start", "--foreground", "--ncs",
                                              "--ts-config", f"{KSERVE_MODEL_MOUNT}/config/config.properties",
                                              "--model-store", f"{KSERVE_MODEL_MOUNT}/model-store"]


def runtime_argv(container: dict) -> list[str]:
    """The runtime's own command, after the wait for the model layout (ic.waitForModel)."""
    cmd = container["command"]
    assert cmd[:2] == ["sh", "-c"] and cmd[3] == "wait-for-model", cmd[:4]
    return cmd[4:]


@pytest.mark.parametrize("runtime, files", [
    ("torchserve", ["config/config.properties", "model-store/*.mar"]), ("kserve-native", ["model-store/*.mar"])])
def test_model_containers_wait_for_their_layout(runtime, files, tmp_path):
    """A pvc:// claim is mounted, not copied (KServe's pod webhook): a pod may start before the
    upload. The wait loop runs here under sh with a folder as /mnt/models stand-in: it waits while
    the layout is missing and execs the runtime's command once it is there. tests/containers/test_pods.py runs
    the same in a real pod."""
    script = runtime_container(render(), runtime)["command"][2]
    assert "{{" not in script and "$(" not in script  # KServe's text/template; the kubelet's $(VAR)
    models = tmp_path / "models"
    local = script.replace(KSERVE_MODEL_MOUNT, str(models))
    proc = subprocess.Popen(["sh", "-c", local, "wait-for-model", "echo", "started"], stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        for f in files:
            (models / f.replace("*", "fashion-mnist")).parent.mkdir(parents=True, exist_ok=True)
            (models / f.replace("*", "fashion-mnist")).write_text("x")
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert out.splitlines() == [f"waiting for the model layout in /mnt/models ({', '.join(files)}): copy it into "
                                "the model storage".replace("/mnt/models", str(models)), "started"]


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_no_go_template_in_what_kserve_templates(values):
    """KServe runs Go text/template over the predictor's containers: a "{{" there would break the
    reconcile (or be replaced)."""
    objs = render(values)
    for o in [*of_kind(objs, "ServingRuntime"), *of_kind(objs, "InferenceService")]:
        assert "{{" not in json.dumps(o["spec"]), o["metadata"]["name"]


@pytest.mark.parametrize("runtime", ["torchserve", "kserve-native"])
def test_every_model_container_drains_before_sigterm(runtime):
    objs = render(None, "shutdown.drainSeconds=7", "shutdown.terminationGracePeriodSeconds=40")
    c = runtime_container(objs, runtime)
    assert c["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "7"]}}
    for isvc in (o for o in objs if o["kind"] == "InferenceService"):
        assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] == 40


def test_a_drain_longer_than_the_grace_period_is_refused():
    assert "drainSeconds must be shorter" in refused("--set", "shutdown.drainSeconds=30")


def test_torchserve_env_and_ports_match_settings():
    """The chart's TS_* variables are TorchServe's own names from ServingSettings.torchserve_env():
    inference and gRPC inference on 0.0.0.0; management (REST and gRPC) and the frontend's own
    metrics on loopback, read by the exporter, which serves the pod's metrics port."""
    c = runtime_container(render(), "torchserve")
    env = env_of(c)
    pod = ServingSettings(host="0.0.0.0").torchserve_env()
    loop = ServingSettings(host="127.0.0.1").torchserve_env()
    ts_env = {k: v for k, v in env.items() if k.startswith("TS_") and k not in LIMITS_TS_ENV}
    assert set(ts_env) <= set(pod), f"unknown TorchServe variables {set(ts_env) - set(pod)}"
    assert ts_env == {
        "TS_INFERENCE_ADDRESS": pod["TS_INFERENCE_ADDRESS"],
        "TS_METRICS_ADDRESS": pod["TS_METRICS_ADDRESS"],
        "TS_GRPC_INFERENCE_ADDRESS": pod["TS_GRPC_INFERENCE_ADDRESS"],
        "TS_GRPC_INFERENCE_PORT": pod["TS_GRPC_INFERENCE_PORT"],
        "TS_MANAGEMENT_ADDRESS": loop["TS_MANAGEMENT_ADDRESS"],
        "TS_GRPC_MANAGEMENT_ADDRESS": loop["TS_GRPC_MANAGEMENT_ADDRESS"],
        "TS_GRPC_MANAGEMENT_PORT": loop["TS_GRPC_MANAGEMENT_PORT"],
    }
    assert env["TS_INFERENCE_ADDRESS"] == "http://0.0.0.0:8080"
    assert env["TS_MANAGEMENT_ADDRESS"] == "http://127.0.0.1:8081"
    # the frontend's own metrics on loopback; the exporter serves the pod's metrics port
    assert env["TS_METRICS_ADDRESS"] == "http://127.0.0.1:8092"
    command = c["command"]
    exporter = command[command.index("handlers.exporter") + 1:command.index("torchserve")]
    assert exporter == ["--listen", "0.0.0.0:8082", "--frontend-port", "8092",
                        "--config", "/mnt/models/config/config.properties", "--"]
    assert (env["TS_GRPC_INFERENCE_ADDRESS"], env["TS_GRPC_INFERENCE_PORT"]) == ("0.0.0.0", "7070")
    s = ServingSettings()
    assert ports_of(c) == {"http1": s.inference_port, "h2c": s.grpc_inference_port, "metrics": s.metrics_port}
    assert c["ports"][0]["name"] == "http1"  # KServe routes HTTP to the first port
    # writable places on a read-only root filesystem
    assert env["TMPDIR"] == "/tmp"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", env["LOG_LOCATION"], env["METRICS_LOCATION"]} <= mounts


# TorchServe's own names for the limits it has (config.properties keys as TS_* variables)
LIMITS_TS_ENV = {"TS_MAX_REQUEST_SIZE": "max_request_bytes", "TS_JOB_QUEUE_SIZE": "queue_size"}
LIMITS_VALUES = {"maxRequestBytes": "max_request_bytes", "maxImagesPerRequest": "max_images_per_request",
                 "queueSize": "queue_size", "maxInflight": "max_inflight",
                 "bodyTimeoutSeconds": "body_timeout_s", "retryAfterSeconds": "retry_after_s"}


def test_limits_values_are_the_runtimes_defaults_and_reach_both_containers():
    """One set of numbers: values.yaml's limits equal RequestLimits' defaults; the KServe-native
    container reads all of them back from its environment, TorchServe's frontend its body size
    and queue (TS_*) and its handler the images per request (SERVE_*)."""
    defaults = RequestLimits()
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["limits"]
    assert chart == {key: getattr(defaults, field) for key, field in LIMITS_VALUES.items()}
    objs = render()
    assert RequestLimits.from_env(env_of(runtime_container(objs, "kserve-native"))) == defaults
    ts = env_of(runtime_container(objs, "torchserve"))
    assert {k: int(ts[k]) for k in LIMITS_TS_ENV} == {k: getattr(defaults, f) for k, f in LIMITS_TS_ENV.items()}
    assert RequestLimits.from_env(ts).max_images_per_request == defaults.max_images_per_request
    custom = render(None, "limits.maxRequestBytes=1048576", "limits.queueSize=7", "limits.maxInflight=9")
    native = RequestLimits.from_env(env_of(runtime_container(custom, "kserve-native")))
    assert (native.max_request_bytes, native.queue_size, native.max_inflight) == (1048576, 7, 9)
    ts = env_of(runtime_container(custom, "torchserve"))
    assert (ts["TS_MAX_REQUEST_SIZE"], ts["TS_JOB_QUEUE_SIZE"]) == ("1048576", "7")
    # with auth, the exporter's proxy reads whole bodies first: it is bounded like the runtime
    assert "SERVE_MAX_INFLIGHT" not in ts
    proxied = RequestLimits.from_env(env_of(runtime_container(render("auth-values.yaml", "limits.maxInflight=9",
                                                                     "limits.bodyTimeoutSeconds=5"), "torchserve")))
    assert (proxied.max_inflight, proxied.body_timeout_s, proxied.retry_after_s) == (9, 5, defaults.retry_after_s)


def test_kserve_native_runtime_command_matches_its_cli():
    c = runtime_container(render(), "kserve-native")
    argv = runtime_argv(c)
    assert argv[:3] == ["python", "-m", "scripts.runtime"]
    args = get_args_parser().parse_args(argv[3:])  # the runtime's own parser accepts them
    assert (str(args.model_store), args.host, args.http_port, args.grpc_port, args.metrics_port) == \
        (f"{KSERVE_MODEL_MOUNT}/model-store", "0.0.0.0", 8080, 8081, 8082)
    assert ports_of(c) == {"http1": 8080, "h2c": 8081, "metrics": 8082}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}


def test_probes_of_the_torchserve_runtime():
    c = runtime_container(render(), "torchserve")
    script = (CHART / "files" / "torchserve_ready.py").read_text()
    for probe in ("readinessProbe", "startupProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[:2] == ["python3", "-c"] and cmd[2].strip() == script.strip()
        assert cmd[3] == f"{KSERVE_MODEL_MOUNT}/config/config.properties"
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600  # slow model loads
    assert c["livenessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert "httpGet" not in c["readinessProbe"]  # /ping is healthy before the workers load


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_security_context_everywhere(values):
    objs = render(values)
    knative = values == "knative-canary-values.yaml"
    seen = 0
    for obj, containers, volumes in all_containers(objs):
        for c in containers:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
            assert sc["runAsUser"] > 10000 and sc["runAsGroup"] > 10000
            assert sc["allowPrivilegeEscalation"] is False
            # false is its default; Knative before 1.17 refuses the field itself
            assert sc["privileged"] is False if not knative else "privileged" not in sc
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["limits"] and c["resources"]["requests"]
            seen += 1
        if obj["kind"] == "ServingRuntime":
            tmp = [v for v in volumes if v["name"] == "tmp"]
            assert tmp and "emptyDir" in tmp[0]
    assert seen
    for i in of_kind(objs, "InferenceService"):
        if knative:  # Knative refuses every pod-level field by default: the containers carry them
            assert "securityContext" not in i["spec"]["predictor"]
            continue
        psc = i["spec"]["predictor"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_knative_admits_the_predictor_pods():
    """Knative's field masks (tests/deploy/kserve_pod.py knative_pod_errors) admit every Knative-mode pod
    spec of the chart with Knative's default flags and 1.15; the Standard-mode spec, with its
    pod-level securityContext and privileged: false, would be refused."""
    objs = render("knative-canary-values.yaml")
    for i in of_kind(objs, "InferenceService"):
        assert knative_pod_errors(predictor_pod(objs, i)) == []
    standard = render()
    errors = knative_pod_errors(predictor_pod(standard, isvc(standard, "fashion-mnist")))
    assert errors == ["pod securityContext ['fsGroup', 'runAsGroup', 'runAsNonRoot', 'runAsUser', 'seccompProfile'] "
                      "(kubernetes.podspec-securitycontext disabled)",
                      "container kserve-container: securityContext.privileged (Knative < 1.17)"]


def test_knative_metric_aggregation_scrapes_each_runtimes_metrics_port():
    """KServe's metric aggregation makes queue-proxy scrape prometheus.kserve.io/port (default
    8080, TorchServe's inference port): each predictor names its runtime's metrics port."""
    objs = render("knative-canary-values.yaml")
    for i in of_kind(objs, "InferenceService"):
        p = i["spec"]["predictor"]
        runtime = p["labels"]["image-classifier/runtime"]
        ports = yaml.safe_load((CHART / "values.yaml").read_text())["ports"]
        want = ports["torchserve"]["metrics"] if runtime == "torchserve" else ports["kserveNative"]["metrics"]
        assert aggregated_metrics_port(p) == want
        assert p["annotations"]["prometheus.kserve.io/path"] == "/metrics"
        # Prometheus scrapes KServe's aggregation port: a Knative pod declares one container port,
        # and a PodMonitor keeps declared ports only (tests/cluster/test_prometheus_operator.py)
        assert int(p["annotations"]["prometheus.io/port"]) == KSERVE_AGGREGATION_PORT == ports["knativeAggregatedMetrics"]
        assert metrics_ports(objs, i) == {want}
    monitors = of_kind(objs, "PodMonitor")
    assert monitors and {e["portNumber"] for m in monitors for e in m["spec"]["podMetricsEndpoints"]} == \
        {KSERVE_AGGREGATION_PORT}
    assert "prometheus.kserve.io/port" not in isvc(render(), "fashion-mnist")["spec"]["predictor"]["annotations"]


@pytest.mark.parametrize("values", [None, "grpc-v2-values.yaml", "v2-values.yaml"])
def test_where_the_gateway_sends_each_protocol(values):
    """Standard mode: KServe's Ingress reaches only the first container port (REST) for every
    protocol; with Gateway API, OIP gRPC reaches the h2c port, and TorchServe's own gRPC service
    (org.pytorch.serve.grpc.inference.InferenceAPIsService) matches no route to it."""
    objs = render(values)
    for i in of_kind(objs, "InferenceService"):
        c = predictor_pod(objs, i)["containers"][0]
        rest = serving_port(c, "v1")
        assert gateway_target_port(c, grpc_path="/inference.GRPCInferenceService/ModelInfer") == rest
        assert gateway_target_port(c, grpc_path=None, gateway_api=True) == rest
        grpc_port = {p.get("name"): p["containerPort"] for p in c["ports"]}["h2c"]
        assert gateway_target_port(c, "/inference.GRPCInferenceService/ModelInfer", gateway_api=True) == grpc_port
        assert gateway_target_port(c, "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
                                   gateway_api=True) == rest


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_management_port_is_never_exposed(values):
    objs = render(values)
    s = ServingSettings()  # the loopback-only listeners
    management = {s.management_port, s.grpc_management_port, s.frontend_metrics_port}
    for svc in of_kind(objs, "Service"):
        assert not {p["port"] for p in svc["spec"]["ports"]} & management
        assert not {p["targetPort"] for p in svc["spec"]["ports"]} & management
        assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    c = runtime_container(objs, "torchserve") if any(
        o["metadata"]["name"] == "image-classifier-torchserve" for o in of_kind(objs, "ServingRuntime")) else None
    if c:
        assert not set(ports_of(c).values()) & management
    for np in of_kind(objs, "NetworkPolicy"):
        if np["spec"]["podSelector"]["matchLabels"].get("image-classifier/runtime") == "torchserve":
            ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
            assert not ports & management


# --- InferenceServices and the modes ---------------------------------------------------------------

def test_upload_pod_is_isolated_and_ready_when_the_claim_is_writable():
    objs = render()
    upload = one(objs, "Pod", "image-classifier-model-upload")
    assert upload["spec"]["containers"][0]["readinessProbe"]["exec"]["command"] == ["test", "-w", "/models"]
    np = one(objs, "NetworkPolicy", "image-classifier-model-upload")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= upload["metadata"]["labels"].items()
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in np["spec"] and "egress" not in np["spec"]
    assert not of_kind(render("s3-servicemonitor-values.yaml"), "Pod")  # no upload pod, no policy for it
    assert not [n for n in of_kind(render("s3-servicemonitor-values.yaml"), "NetworkPolicy")
                if n["metadata"]["name"].endswith("model-upload")]


def test_default_models_standard_mode_pvc():
    objs = render()
    assert [i["metadata"]["name"] for i in of_kind(objs, "InferenceService")] == ["fashion-mnist", "imagenet"]
    for name in ("fashion-mnist", "imagenet"):
        i = isvc(objs, name)
        assert i["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        assert i["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
        p = i["spec"]["predictor"]
        assert (p["minReplicas"], p["maxReplicas"], p["scaleMetric"], p["scaleTarget"]) == (1, 3, "cpu", 70)
        assert "canaryTrafficPercent" not in p
        assert p["model"] == {"modelFormat": {"name": "pytorch-mar"}, "runtime": "image-classifier-torchserve",
                              "protocolVersion": "v1", "storageUri": f"pvc://image-classifier-models/{name}"}
        assert p["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8082",
                                    "prometheus.io/path": "/metrics"}
        assert p["labels"]["image-classifier/runtime"] == "torchserve"
    pvc = one(objs, "PersistentVolumeClaim", "image-classifier-models")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    upload = one(objs, "Pod", "image-classifier-model-upload")
    assert upload["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "image-classifier-models"
    ns = one(objs, "Namespace", "image-classifier")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("values, sets", [("modelcar-values.yaml", ()),
                                          ("s3-servicemonitor-values.yaml", ("storage.storageContainer.create=false",))])
def test_a_namespace_with_injected_storage_containers_enforces_baseline(values, sets):
    """The containers KServe v0.20 injects for oci:// (and, with its default ClusterStorageContainer,
    for s3://) do not meet "restricted" (tests/cluster/test_kserve_controller.py shows the real refusal)."""
    labels = one(render(values, "namespace.create=true", *sets), "Namespace", "image-classifier")["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("pod-security")} == {
        "pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def test_a_namespace_with_only_claims_enforces_restricted():
    for values in (None, "v2-values.yaml", "grpc-v2-values.yaml"):
        ns = one(render(values), "Namespace", "image-classifier")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_object_storage_uses_the_releases_restricted_storage_container():
    """s3:// and gs:// models name the release's ClusterStorageContainer, whose container KServe
    merges over its storage initializer: with its restricted securityContext the namespace enforces
    "restricted" (the real webhook's pod: tests/cluster/test_kserve_controller.py)."""
    objs = render("s3-servicemonitor-values.yaml", "namespace.create=true")
    [csc] = of_kind(objs, "ClusterStorageContainer")
    assert csc["metadata"]["name"] == "image-classifier-image-classifier"
    assert [f["prefix"] for f in csc["spec"]["supportedUriFormats"]] == ["s3://", "gs://"]
    for i in of_kind(objs, "InferenceService"):
        assert i["spec"]["predictor"]["storageContainerName"] == csc["metadata"]["name"]
        init = predictor_pod(objs, i)["initContainers"][0]
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert init["image"] == "kserve/storage-initializer:v0.20.0" == STORAGE_INITIALIZER_IMAGE
    labels = one(objs, "Namespace", "image-classifier")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not of_kind(render(), "ClusterStorageContainer")  # pvc:// only: none
    assert not of_kind(render("s3-servicemonitor-values.yaml", "storage.storageContainer.create=false"),
                       "ClusterStorageContainer")


def test_gpu_values():
    objs = render("gpu-values.yaml")
    assert runtime_container(objs, "torchserve")["image"] == "registry.example.com/image-classifier/torchserve:0.1.0-gpu"
    assert runtime_container(objs, "kserve-native")["image"].endswith(":0.1.0-gpu")
    for i in of_kind(objs, "InferenceService"):
        p = i["spec"]["predictor"]
        assert p["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert p["model"]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
        assert p["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert all("nodeSelector" not in i["spec"]["predictor"] for i in of_kind(render(), "InferenceService"))


def test_v2_values():
    objs = render("v2-values.yaml")
    fm, im = isvc(objs, "fashion-mnist"), isvc(objs, "imagenet")
    assert (fm["spec"]["predictor"]["model"]["protocolVersion"], fm["spec"]["predictor"]["model"]["runtime"]) == \
        ("v2", "image-classifier-torchserve")
    assert (im["spec"]["predictor"]["model"]["protocolVersion"], im["spec"]["predictor"]["model"]["runtime"]) == \
        ("v2", "image-classifier-kserve-native")
    assert im["spec"]["predictor"]["annotations"]["prometheus.io/port"] == "8082"  # its own metrics port
    assert [p["spec"]["podMetricsEndpoints"][0]["portNumber"] for p in of_kind(objs, "PodMonitor")] == [8082, 8082]


def test_grpc_v2_values():
    objs = render("grpc-v2-values.yaml")
    model = isvc(objs, "fashion-mnist")["spec"]["predictor"]["model"]
    assert (model["protocolVersion"], model["runtime"]) == ("grpc-v2", "image-classifier-kserve-native")
    sr = one(objs, "ServingRuntime", "image-classifier-kserve-native")
    assert "grpc-v2" in sr["spec"]["protocolVersions"]
    assert ports_of(sr["spec"]["containers"][0])["h2c"] == 8081
    np = one(objs, "NetworkPolicy", "image-classifier-kserve-native")
    assert {p["port"] for p in np["spec"]["ingress"][0]["ports"]} == {8080, 8081}


def test_kserve_native_metrics_listen_apart_and_only_the_monitoring_namespace_reaches_them():
    """The token-guarded inference ports and /metrics differ, so the NetworkPolicy can open the
    metrics port to the monitoring namespace alone (its first rule, from anywhere allowed, lists
    the inference ports only)."""
    objs = render("auth-values.yaml")
    c = runtime_container(objs, "kserve-native")
    metrics = yaml.safe_load((CHART / "values.yaml").read_text())["ports"]["kserveNative"]["metrics"]
    assert ports_of(c)["metrics"] == metrics == get_args_parser().parse_args(runtime_argv(c)[3:]).metrics_port
    assert metrics not in (ports_of(c)["http1"], ports_of(c)["h2c"])
    np = one(objs, "NetworkPolicy", "image-classifier-kserve-native")
    inference_rule, monitoring_rule = np["spec"]["ingress"]
    assert metrics not in {p["port"] for p in inference_rule["ports"]}
    assert [p["port"] for p in monitoring_rule["ports"]] == [metrics]
    assert monitoring_rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["monitoringNamespace"]}}}]


@pytest.mark.parametrize("runtime", ["kserve-native", "torchserve"])
def test_auth_values_mount_the_secret_where_the_runtime_reads_its_tokens(runtime, tmp_path):
    objs = render("auth-values.yaml")
    secret = one(objs, "Secret", "image-classifier-tokens")
    tokens = tmp_path / "tokens"
    tokens.write_text(secret["stringData"]["tokens"])
    assert TokenFile(tokens).tokens() == (b"ci-token-0f3c9a",)
    c = runtime_container(objs, runtime)
    token_file = AuthSettings.from_env(env_of(c)).token_file
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tokens")
    assert token_file == f"{mount['mountPath']}/tokens" and mount["readOnly"] and "subPath" not in mount
    volume = next(v for v in one(objs, "ServingRuntime", f"image-classifier-{runtime}")["spec"]["volumes"]
                  if v["name"] == "tokens")
    assert volume["secret"] == {"secretName": "image-classifier-tokens", "items": [{"key": "tokens", "path": "tokens"}]}
    # the default: no authentication, no Secret
    default = render()
    assert not of_kind([o for o in default if o["metadata"]["name"] == "image-classifier-tokens"], "Secret")
    assert "SERVE_TOKEN_FILE" not in env_of(runtime_container(default, runtime))
    # a Secret made outside the chart: mounted, not rendered
    own = render("auth-values.yaml", "auth.createSecret=false", "auth.secretName=my-tokens")
    assert not [o for o in own if o["kind"] == "Secret" and "tokens" in o["metadata"]["name"]]
    assert next(v for v in one(own, "ServingRuntime", f"image-classifier-{runtime}")["spec"]["volumes"]
                if v["name"] == "tokens")["secret"]["secretName"] == "my-tokens"


def test_torchserve_with_auth_listens_on_loopback_behind_the_exporter(tmp_path, monkeypatch):
    """With auth.enabled the exporter holds TorchServe's public inference ports and forwards to
    TorchServe's own listeners, which move to loopback (ServingSettings.torchserve_env(authenticated=True)):
    nothing reaches TorchServe without passing the token check."""
    objs = render("auth-values.yaml")
    c = runtime_container(objs, "torchserve")
    env = env_of(c)
    s = ServingSettings(host="0.0.0.0")
    listeners = ("TS_INFERENCE_ADDRESS", "TS_GRPC_INFERENCE_ADDRESS", "TS_GRPC_INFERENCE_PORT")
    authenticated = s.torchserve_env(authenticated=True)
    assert {k: env[k] for k in listeners} == {k: authenticated[k] for k in listeners}
    assert {k: env[k] for k in listeners} == {"TS_INFERENCE_ADDRESS": "http://127.0.0.1:8093",
                                              "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": "7072"}
    command = c["command"]
    monkeypatch.setenv("SERVE_TOKEN_FILE", env["SERVE_TOKEN_FILE"])  # the exporter's default, as in the pod
    args, torchserve = exporter.parse_args(command[command.index("handlers.exporter") + 1:])
    assert args.token_file == env["SERVE_TOKEN_FILE"] and torchserve[0] == "torchserve"
    public = ports_of(c)
    assert args.inference_listen == ("0.0.0.0", public["http1"]) and args.grpc_listen == ("0.0.0.0", public["h2c"])
    config = tmp_path / "config.properties"
    config.write_text("")  # the pod's TS_* variables say it all
    upstream = exporter.proxied_upstream(config, env=env)
    ports = yaml.safe_load((CHART / "values.yaml").read_text())["ports"]["torchserve"]
    assert upstream.rest_url == f"http://127.0.0.1:{ports['upstreamInference']}" == f"http://127.0.0.1:{s.inference_upstream_port}"
    assert upstream.grpc_target == f"127.0.0.1:{ports['upstreamGrpcInference']}" == f"127.0.0.1:{s.grpc_inference_upstream_port}"
    assert upstream.max_request_bytes == RequestLimits().max_request_bytes
    np = one(objs, "NetworkPolicy", "image-classifier-torchserve")
    opened = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert not opened & {ports["upstreamInference"], ports["upstreamGrpcInference"]}
    assert {public["http1"], public["h2c"]} <= opened


def test_knative_canary_values():
    objs = render("knative-canary-values.yaml")
    fm = isvc(objs, "fashion-mnist")
    ann = fm["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Knative"
    assert ann["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert (ann["autoscaling.knative.dev/metric"], ann["autoscaling.knative.dev/target"]) == ("concurrency", "4")
    assert "serving.kserve.io/autoscalerClass" not in ann
    p = fm["spec"]["predictor"]
    assert (p["canaryTrafficPercent"], p["minReplicas"], p["maxReplicas"]) == (10, 0, 5)
    assert "canaryTrafficPercent" not in isvc(objs, "imagenet-grpc")["spec"]["predictor"]
    # Knative routes one port per container: TorchServe's runtime declares http1 only; the
    # KServe-native runtime declares none and each of its models names its own (h2c for gRPC)
    assert ports_of(runtime_container(objs, "torchserve")) == {"http1": 8080}
    assert "ports" not in runtime_container(objs, "kserve-native")
    assert isvc(objs, "imagenet-grpc")["spec"]["predictor"]["model"]["ports"] == \
        [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert "ports" not in fm["spec"]["predictor"]["model"]


def test_monitoring_on_by_default():
    objs = render()
    rule = one(objs, "PrometheusRule", "image-classifier")
    rules_file = CHART / "files" / "rules.yaml"
    generated = (yaml.safe_load(rules_file.read_text()) or {}).get("groups", [])
    # then the SLO objectives of each model (tests/monitoring/test_slo.py)
    assert rule["spec"]["groups"][:-1] == generated and rule["spec"]["groups"][-1]["name"] == "image-classifier.slo-parameters"
    dash = one(objs, "ConfigMap", "image-classifier-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["image-classifier.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    pm = one(objs, "PodMonitor", "image-classifier-torchserve")
    assert pm["spec"]["podMetricsEndpoints"] == [{"portNumber": 8082, "path": "/metrics", "interval": "30s"}]
    assert pm["spec"]["selector"]["matchLabels"]["image-classifier/runtime"] == "torchserve"
    assert not of_kind(objs, "ServiceMonitor") and not of_kind(objs, "Service")


def test_monitoring_off_values():
    objs = render("monitoring-off-values.yaml")
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Service"}
    for i in of_kind(objs, "InferenceService"):
        assert "annotations" not in i["spec"]["predictor"]


def test_s3_credentials_and_service_monitor_values():
    objs = render("s3-servicemonitor-values.yaml")
    assert not of_kind(objs, "Namespace") and not of_kind(objs, "PersistentVolumeClaim") and not of_kind(objs, "Pod")
    secret = one(objs, "Secret", "image-classifier-storage")
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "s3.amazonaws.com"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert one(objs, "ServiceAccount", "image-classifier-storage")["secrets"] == [{"name": "image-classifier-storage"}]
    for i in of_kind(objs, "InferenceService"):
        assert i["spec"]["predictor"]["serviceAccountName"] == "image-classifier-storage"
        assert i["spec"]["predictor"]["model"]["storageUri"].startswith("s3://")
    svc = one(objs, "Service", "fashion-mnist-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8082, "targetPort": 8082, "protocol": "TCP"}]
    sm = one(objs, "ServiceMonitor", "image-classifier-torchserve")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


# --- values the chart refuses ----------------------------------------------------------------------

FM = {"name": "fashion-mnist", "runtime": "torchserve", "protocol": "v1",
      "storageUri": "pvc://image-classifier-models/fashion-mnist"}
IM = {"name": "imagenet", "runtime": "torchserve", "protocol": "v1",
      "storageUri": "pvc://image-classifier-models/imagenet"}


def model(**changes) -> dict:
    return {"models": [{**FM, **changes}, IM]}


def refused_values(values: dict, tmp_path: Path) -> str:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    return refused("-f", str(f))


@pytest.mark.parametrize("values, where", [
    ({"autoscaling": {"maxReplicas": -1}}, "/autoscaling/maxReplicas"),
    ({"autoscaling": {"minReplicas": -2}}, "/autoscaling/minReplicas"),
    ({"ports": {"torchserve": {"inference": -1}}}, "/ports/torchserve/inference"),
    ({"ports": {"torchserve": {"metrics": 0}}}, "/ports/torchserve/metrics"),
    ({"ports": {"kserveNative": {"grpc": 70000}}}, "/ports/kserveNative/grpc"),
    ({"ports": {"kserveNative": {"http": "8080"}}}, "/ports/kserveNative/http"),
    ({"deploymentMode": "Serverless"}, "/deploymentMode"),
    (model(protocol="v3"), "/models/0/protocol"),
    (model(runtime="triton"), "/models/0/runtime"),
    (model(storageUri="http://example.com/m"), "/models/0/storageUri"),
    (model(name="Fashion_MNIST"), "/models/0/name"),
    (model(canaryTrafficPercent=101), "/models/0/canaryTrafficPercent"),
    (model(minReplicas=-1), "/models/0/minReplicas"),
    (model(replicas=2), "/models/0"),
    ({"models": []}, "/models"),
    ({"gpu": {"count": 0}}, "/gpu/count"),
    ({"runtimes": {"torchserve": {"startupSeconds": -5}}}, "/runtimes/torchserve/startupSeconds"),
    ({"replicas": 2}, "replicas"),  # unknown key
    ({"storage": {"credentials": {"type": "azure"}}}, "/storage/credentials/type"),
    ({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy"),
    ({"limits": {"queueSize": 0}}, "/limits/queueSize"),
    ({"limits": {"maxRequestBytes": "8M"}}, "/limits/maxRequestBytes"),
    ({"limits": {"timeout": 3}}, "/limits"),  # unknown key
    ({"auth": {"token": "two words"}}, "/auth/token"),
    ({"auth": {"enabled": "yes"}}, "/auth/enabled"),
])
def test_schema_refuses_bad_values(values, where, tmp_path):
    err = refused_values(values, tmp_path)
    assert "schema" in err and where in err, err


@pytest.mark.parametrize("values, message", [
    (model(canaryTrafficPercent=10), "canary rollouts exist only in deploymentMode Knative"),
    (model(protocol="grpc-v2"), "protocol grpc-v2 needs runtime kserve-native"),
    ({"autoscaling": {"metric": "concurrency"}}, "needs deploymentMode Knative"),
    ({"deploymentMode": "Knative"}, "is an HPA metric"),
    ({"autoscaling": {"minReplicas": 0}}, "scale to zero) needs deploymentMode Knative"),
    ({"autoscaling": {"minReplicas": 5}}, "minReplicas is larger than"),
    ({"models": [FM, FM]}, "listed twice"),
    (model(storageUri="s3://bucket/m"), "needs storage.credentials.type s3"),
    (model(storageUri="gs://bucket/m"), "needs storage.credentials.type gcs"),
    ({"runtimes": {"torchserve": {"enabled": False}}}, "runtimes.torchserve.enabled is false"),
    ({"monitoring": {"serviceMonitor": {"enabled": True}}}, "enable one"),
])
def test_template_refuses_inconsistent_values(values, message, tmp_path):
    assert message in refused_values(values, tmp_path)


# --- strict schema validation: core kinds and CRDs ---------------------------------------------------

def test_kubernetes_validate_has_the_versions():
    import kubernetes_validate

    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for v in KUBE_VERSIONS:
        assert (bundled / f"v{v}-local-strict").is_dir(), sorted(p.name for p in bundled.iterdir())
        assert k8s_validate.validate_core({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}, v) == []
    assert k8s_validate.validate_core({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                                       "bogus": 1}, "1.30.0"), "kubernetes-validate is not strict"


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_kinds_validate_strictly(values, kube_version):
    core = [o for o in render(values) if not k8s_validate.is_custom(o)]
    assert core
    problems = [m for o in core for m in k8s_validate.validate_core(o, kube_version)]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def crds():
    if not CRDS.is_dir():
        message = f"no CRD folder {CRDS}: set CRDS_DIR to a folder with the KServe and prometheus-operator CRDs"
        if os.environ.get("CI"):  # CI always has ../shared beside the clone: never skip there
            pytest.fail(reason=message)
        pytest.skip(reason=message)
    os.environ.setdefault("CRDS_DIR", str(CRDS))
    schemas = k8s_validate.load_crds(CRDS)
    # ../shared/crds has no ClusterStorageContainer: its CRD from the kserve module of that release
    schemas.update(k8s_validate.load_crds(kserve_mod.source() / "config" / "crd" / "full" / "clusterstoragecontainer"))
    return schemas


def test_crd_validator_is_strict(crds):
    objs = render()
    i = json.loads(json.dumps(isvc(objs, "fashion-mnist")))
    assert k8s_validate.validate_custom(i, crds) == []
    i["spec"]["predictor"]["model"]["storageURI"] = "typo"
    i["spec"]["predictor"]["minReplicas"] = "1"
    problems = "\n".join(k8s_validate.validate_custom(i, crds))
    assert "storageURI" in problems and "minReplicas" in problems
    sr = json.loads(json.dumps(one(objs, "ServingRuntime", "image-classifier-torchserve")))
    sr["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "http1"  # int-or-string
    assert k8s_validate.validate_custom(sr, crds) == []
    sr["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    assert k8s_validate.validate_custom(sr, crds)


@pytest.mark.parametrize("values", [None, *VALUES_FILES])
def test_custom_resources_validate_against_the_crds(values, crds):
    custom = [o for o in render(values) if k8s_validate.is_custom(o)]
    assert {o["kind"] for o in custom} >= {"ServingRuntime", "InferenceService"}
    problems = [f"{o['kind']}/{o['metadata']['name']}: {m}" for o in custom
                for m in k8s_validate.validate_custom(o, crds)]
    assert not problems, "\n".join(problems)


# --- k8s/ is the chart, rendered ---------------------------------------------------------------------

def test_k8s_dir_is_up_to_date_with_the_chart():
    problems = k8s_render.stale_files()
    assert not problems, "k8s/ is out of date: run `make k8s`\n" + "\n".join(problems)


def test_kubectl_kustomize_builds_the_same_objects():
    proc = subprocess.run([k8s_render.find_tool("kubectl"), "kustomize", str(REPO / "k8s")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    built = sorted((o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(proc.stdout) if o)
    files = sorted((o["kind"], o["metadata"]["name"]) for o in k8s_validate.load_objects(sorted((REPO / "k8s").glob("*.yaml"))))
    assert built == files
    chart = render()
    assert built == sorted((o["kind"], o["metadata"]["name"]) for o in chart)


# --- the readiness probe, run for real -------------------------------------------------------------

class ProbedTorchServe(TorchServe):
    """TorchServe started exactly like `make serve`, whose readiness is the chart's own exec probe;
    every poll records (GET /ping status, probe exit code)."""

    def __init__(self, probe_cmd: list[str], *args):
        super().__init__(*args)
        self.probe_cmd, self.timeline = probe_cmd, []

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.settings.inference_url}/ping", timeout=2) as r:
                ping = r.status
        except urllib.error.HTTPError as e:
            ping = e.code
        except OSError:
            ping = None
        env = {**os.environ, "TS_MANAGEMENT_ADDRESS": self.settings.management_url}
        probe = subprocess.run(self.probe_cmd, env=env, capture_output=True, text=True, timeout=10)
        self.timeline.append((ping, probe.returncode, probe.stderr.strip()[-200:]))
        return probe.returncode == 0


@pytest.mark.integration
def test_readiness_probe_waits_for_the_workers(imagenet_checkpoint, tmp_path):
    """The chart's probe command fails while TorchServe's /ping already says Healthy and the
    worker still loads, and succeeds once the model's worker is READY."""
    store = tmp_path / "store"
    archive.archive(imagenet_checkpoint, store, IMAGENET_NAME)
    config = (store / "config" / "config.properties").read_text()
    # the archive's config.properties and the runtime's command name the same model store
    assert f"model_store={KSERVE_MODEL_MOUNT}/model-store" in config.splitlines()
    assert "enable_envvars_config=true" in config.splitlines()  # the chart's TS_* variables apply
    assert "service_envelope" not in config  # native configuration: no /v2/health/ready
    cmd = runtime_container(render(), "torchserve")["readinessProbe"]["exec"]["command"]
    assert cmd[0] == "python3"
    probe_cmd = [sys.executable, *cmd[1:3], str(store / "config" / "config.properties")]
    settings = loopback_settings()
    ts = ProbedTorchServe(probe_cmd, store, settings, tmp_path / "run")
    ts.poll_seconds = 0.2
    try:
        ts.start(timeout=180)
        with urllib.request.urlopen(f"{settings.management_url}/models/{IMAGENET_NAME}", timeout=5) as r:
            assert [w["status"] for w in json.load(r)[0]["workers"]] == ["READY"]
        # a model the snapshot names but TorchServe does not serve keeps the pod unready
        bad = tmp_path / "bad.properties"
        bad.write_text((store / "config" / "config.properties").read_text().replace(
            f'"{IMAGENET_NAME}":', '"absent":'))
        env = {**os.environ, "TS_MANAGEMENT_ADDRESS": settings.management_url}
        assert subprocess.run([*probe_cmd[:-1], str(bad)], env=env, capture_output=True).returncode != 0
    finally:
        ts.stop()
    timeline = ts.timeline
    assert timeline[-1][:2] == (200, 0)
    early = [t for t in timeline if t[0] == 200 and t[1] != 0]
    assert early, f"/ping never answered while the worker loaded: {timeline}"
    assert any("no READY worker" in t[2] for t in early), early
    print("(/ping status, probe exit code) per poll:", [t[:2] for t in timeline])

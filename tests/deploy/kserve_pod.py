"""What KServe's controller makes of the chart's InferenceService + ServingRuntime, emulated
because no control plane runs here: the predictor container (KServe's container merge), its
Deployment (for checkov), the predictor pod with the storage its pod webhook mounts, and the routing
of each protocol to a container port (Knative's one-port rules included).

Only the control plane is emulated: the pods themselves run from their images with podman
(scripts/containers/pod.py, tests/containers/test_pods.py), the probes, servers and clients are the real ones.
"""
from __future__ import annotations

import copy
import re

from scripts.deploy import k8s_render
from scripts.serve.settings import KSERVE_MODEL_MOUNT

PVC_VOLUME = "kserve-pvc-source"  # the name KServe gives the claim's volume

# Fields of an InferenceService's predictor.model that are not container fields.
MODEL_ONLY_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "name"}
# Container fields of predictor.model that KServe merges over the runtime's container (and that
# this emulation knows how to merge); any other field fails loudly rather than being ignored.
MERGED_FIELDS = {"ports", "env", "args", "resources"}
# predictor fields that configure KServe itself, not the pod spec.
COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent",
                    "containerConcurrency", "timeout", "batcher", "logger", "labels", "annotations",
                    "deploymentStrategy", "autoScaling", "model", "storageContainerName"}


class PodCheckError(AssertionError):
    """The rendered manifest does not run or does not serve what it declares."""


def render(values: str | None = None) -> list[dict]:
    """The chart rendered with one values file (a path, or a name under the chart's ci/)."""
    args = ["-f", str(k8s_render.CHART / "ci" / values) if "/" not in values else values] if values else []
    return [obj for _, obj in k8s_render.split_documents(k8s_render.helm_template(*args))]


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def metrics_ports(objs, isvc: dict) -> set[int]:
    """Ports of the model container that Prometheus scrapes: the prometheus.io/port annotation and
    every PodMonitor whose selector matches the predictor's labels. In Knative mode those name
    KServe's aggregation port on queue-proxy, which scrapes the container's prometheus.kserve.io/port
    (aggregated_metrics_port): that port is the container's."""
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
    if isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") == "Knative":
        if ports - {KSERVE_AGGREGATION_PORT}:
            raise PodCheckError(f"Knative pods declare one container port: scrape {KSERVE_AGGREGATION_PORT} "
                                f"(KServe's aggregation), not {sorted(ports - {KSERVE_AGGREGATION_PORT})}")
        return {aggregated_metrics_port(predictor)} if ports else set()
    return ports


def one(objs, kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise PodCheckError(f"{kind}/{name}: {len(found)} rendered")
    return found[0]


def runtime_of(objs, isvc: dict) -> dict:
    return one(objs, "ServingRuntime", isvc["spec"]["predictor"]["model"]["runtime"])


def merged_container(runtime: dict, isvc: dict) -> dict:
    """KServe's MergeRuntimeContainers: a strategic merge of predictor.model (a container) over the
    runtime's first container: ports merged by containerPort, env by name, resources per key, and
    args appended to the runtime's."""
    base = copy.deepcopy(runtime["spec"]["containers"][0])
    model = isvc["spec"]["predictor"]["model"]
    unknown = set(model) - MODEL_ONLY_FIELDS - MERGED_FIELDS
    if unknown:
        raise PodCheckError(f"predictor.model fields this emulation does not merge: {sorted(unknown)}")
    ports = {p["containerPort"]: p for p in base.get("ports", [])}
    for p in model.get("ports", []):
        ports[p["containerPort"]] = {**ports.get(p["containerPort"], {}), **p}
    if ports:
        base["ports"] = list(ports.values())
    env = {e["name"]: e for e in base.get("env", [])}
    env.update({e["name"]: e for e in model.get("env", [])})
    if env:
        base["env"] = list(env.values())
    if model.get("args"):
        base["args"] = [*base.get("args", []), *model["args"]]
    for key, values in model.get("resources", {}).items():
        base.setdefault("resources", {}).setdefault(key, {}).update(values)
    return base


def predictor_deployment(objs, isvc: dict) -> dict:
    """The Deployment KServe's Standard mode creates for an InferenceService, limited to what the
    chart controls (KServe adds its storage-initializer init container and volume itself)."""
    predictor = isvc["spec"]["predictor"]
    runtime = runtime_of(objs, isvc)
    pod_spec = {k: copy.deepcopy(v) for k, v in predictor.items() if k not in COMPONENT_FIELDS}
    pod_spec["containers"] = [merged_container(runtime, isvc)]
    if runtime["spec"].get("volumes"):
        pod_spec["volumes"] = copy.deepcopy(runtime["spec"]["volumes"])
    labels = {**predictor.get("labels", {}), "app": f"isvc.{isvc['metadata']['name']}-predictor"}
    meta = {"labels": labels, "annotations": predictor.get("annotations", {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{isvc['metadata']['name']}-predictor",
                         "namespace": isvc["metadata"]["namespace"], **meta},
            "spec": {"replicas": predictor.get("minReplicas", 1),
                     "selector": {"matchLabels": {"app": labels["app"]}},
                     "template": {"metadata": meta, "spec": pod_spec}}}


def predictor_pod(objs, isvc: dict) -> dict:
    """The predictor pod spec KServe would run: the Deployment's template plus what its pod webhook
    adds for the storageUri (kserve v0.20 pkg/webhook/admission/pod/storage_initializer_injector.go,
    pkg/utils/storage.go): for pvc://<claim>/<path>, the claim mounted read-only at /mnt/models with
    <path> as subPath; for oci://<image>, the modelcar (below)."""
    spec = copy.deepcopy(predictor_deployment(objs, isvc)["spec"]["template"]["spec"])
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    container = spec["containers"][0]
    container.setdefault("env", []).append({"name": "INFERENCE_SERVICE_NAME", "value": isvc["metadata"]["name"]})
    if uri.startswith("oci://"):
        return add_modelcar(spec, uri.removeprefix("oci://"))
    if uri.startswith(("s3://", "gs://")):
        return add_storage_initializer(spec, uri, storage_container(objs, isvc))
    m = re.fullmatch(r"pvc://([^/]+)/?(.*)", uri)
    if not m:
        raise PodCheckError(f"{uri}: only pvc://, s3://, gs:// and oci:// storage are emulated")
    claim, path = m.groups()
    spec.setdefault("volumes", []).append({"name": PVC_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
    container.setdefault("volumeMounts", []).append(
        {"name": PVC_VOLUME, "mountPath": KSERVE_MODEL_MOUNT, "subPath": path, "readOnly": True})
    return spec


STORAGE_INITIALIZER_IMAGE = "kserve/storage-initializer:v0.20.0"  # the tag our inferenceservice-config sets
STORAGE_INITIALIZER_RESOURCES = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "100Mi"}}


def storage_container(objs, isvc: dict) -> dict | None:
    """The ClusterStorageContainer the predictor names (predictor.storageContainerName), if any."""
    name = isvc["spec"]["predictor"].get("storageContainerName")
    return one(objs, "ClusterStorageContainer", name)["spec"]["container"] if name else None


def add_storage_initializer(spec: dict, uri: str, patch: dict | None = None) -> dict:
    """KServe's storage initializer for object storage: an init container that downloads `uri`
    into an emptyDir, which the runtime mounts read-only at /mnt/models; the container of a
    ClusterStorageContainer named by the predictor is merged over it (storage_initializer_injector.go,
    MergeContainerWithPatch: its image, securityContext, resources...). Its credential variables
    (from the storage Secret, by KServe's credential builder) are not emulated."""
    spec.setdefault("volumes", []).append({"name": MODELCAR_VOLUME, "emptyDir": {}})
    spec["containers"][0].setdefault("volumeMounts", []).append(
        {"name": MODELCAR_VOLUME, "mountPath": KSERVE_MODEL_MOUNT, "readOnly": True})
    init = {"name": "storage-initializer", "image": STORAGE_INITIALIZER_IMAGE, "args": [uri, KSERVE_MODEL_MOUNT],
            "resources": copy.deepcopy(STORAGE_INITIALIZER_RESOURCES), "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [{"name": MODELCAR_VOLUME, "mountPath": KSERVE_MODEL_MOUNT}]}
    for key, value in (patch or {}).items():
        if key not in {"name", "image", "imagePullPolicy", "securityContext", "resources"}:
            raise PodCheckError(f"ClusterStorageContainer field {key}: this emulation does not merge it")
        init[key] = copy.deepcopy(value)
    spec.setdefault("initContainers", []).append(init)
    return spec


MODELCAR_VOLUME = "kserve-provision-location"
MODELCAR_RESOURCES = {"cpu": "10m", "memory": "15Mi"}  # CpuModelcarDefault, MemoryModelcarDefault
UID_MODELCAR = 1010  # inferenceservice-config storageInitializer.uidModelcar, KServe's default


def add_modelcar(spec: dict, image: str) -> dict:
    """KServe's ConfigureModelcarToContainer: an emptyDir at /mnt in the runtime and a modelcar
    sidecar that links its own /models there through /proc (so shareProcessNamespace), an init
    container that checks /models first, MODEL_INIT_MODE=async for the runtime, and the runtime and
    the sidecar as one uid (uidModelcar) so that the runtime may read the sidecar's root. `$$$$` is
    KServe's text: the kubelet's expansion makes it the shell's `$$`. Checked against the real
    controller's pods by tests/cluster/test_kserve_controller.py."""
    parent = KSERVE_MODEL_MOUNT.rsplit("/", 1)[0]
    container = spec["containers"][0]
    container.setdefault("env", []).append({"name": "MODEL_INIT_MODE", "value": "async"})
    container.setdefault("securityContext", {})["runAsUser"] = UID_MODELCAR
    container.setdefault("volumeMounts", []).append({"name": MODELCAR_VOLUME, "mountPath": parent, "readOnly": False})
    spec.setdefault("volumes", []).append({"name": MODELCAR_VOLUME, "emptyDir": {}})
    resources = {"limits": dict(MODELCAR_RESOURCES), "requests": dict(MODELCAR_RESOURCES)}
    spec["containers"].append({
        "name": "modelcar", "image": image, "resources": resources,
        "securityContext": {"runAsUser": UID_MODELCAR}, "terminationMessagePolicy": "FallbackToLogsOnError",
        "args": ["sh", "-c", f"ln -sf /proc/$$$$/root/models {KSERVE_MODEL_MOUNT} && sleep infinity"],
        "volumeMounts": [{"name": MODELCAR_VOLUME, "mountPath": parent, "readOnly": False}]})
    spec.setdefault("initContainers", []).append({
        "name": "modelcar-init", "image": image, "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "args": ["sh", "-c", f"echo 'Pre-fetching modelcar {image}: ' && [ -d /models ] && "
                             "[ \"$$(ls -A /models)\" ] && echo 'OK ... Prefetched and valid (/models exists)' || "
                             "(echo 'NOK ... Prefetched but modelcar is invalid (/models does not exist or is empty)' "
                             "&& exit 1)"]})
    spec["shareProcessNamespace"] = True
    return spec


# Where a container listens, as the manifest says (for the static check that routed ports listen on
# every interface; the pod tests then reach them through published ports, which a loopback
# listener inside the container cannot answer).
PORT_FLAG = re.compile(r"^--[\w-]*port$")
URL_PORT = re.compile(r"^(\w+://)([^/:]+):(\d+)(.*)$")


def bind_addresses(container: dict) -> dict[int, str]:
    """Port → address it binds, as the manifest says: TorchServe's TS_*_ADDRESS (URL or host with
    TS_*_PORT) variables, its metrics exporter's --listen (and, with auth, its proxy's
    --inference-listen and --grpc-listen, which take over TorchServe's ports: read after the TS_*
    variables, which then name loopback ports) and the KServe-native runtime's --host/--*-port flags."""
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    out: dict[int, str] = {}
    for name, value in env.items():
        if not (name.startswith("TS_") and name.endswith("_ADDRESS")):
            continue
        m = URL_PORT.match(value)
        if m:
            out[int(m.group(3))] = m.group(2)
        elif name[:-len("_ADDRESS")] + "_PORT" in env:
            out[int(env[name[:-len("_ADDRESS")] + "_PORT"])] = value
    argv = [*container.get("command", []), *container.get("args", [])]
    host = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--host"), None)
    for i, a in enumerate(argv[:-1]):
        if PORT_FLAG.match(a) and host is not None:
            out[int(argv[i + 1])] = host
        elif a in ("--listen", "--inference-listen", "--grpc-listen"):  # handlers/exporter.py's HOST:PORT
            listen_host, _, listen_port = argv[i + 1].rpartition(":")
            out[int(listen_port)] = listen_host
    return out


# Knative Serving's admission rules for the user container (pkg/apis/serving/k8s_validation.go):
# at most one port, named h2c, http1 or nothing, never one of queue-proxy's ports; a probe port
# given by name must be that port's name (numbers may point anywhere: queue-proxy probes them).
KNATIVE_PORT_NAMES = {"", "h2c", "http1"}
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 8112, 9090, 9091}
KNATIVE_DEFAULT_PORT = 8080


def knative_container_errors(container: dict) -> list[str]:
    """Why Knative's webhook would refuse this merged predictor container (empty when it would not)."""
    ports = container.get("ports", [])
    errors = []
    if len(ports) > 1:
        errors.append(f"more than one container port: {[p['containerPort'] for p in ports]}")
    for p in ports:
        if p.get("name", "") not in KNATIVE_PORT_NAMES:
            errors.append(f"port name {p['name']!r} is not one of h2c, http1")
        if p["containerPort"] in KNATIVE_RESERVED_PORTS:
            errors.append(f"port {p['containerPort']} is reserved for queue-proxy")
        if p.get("protocol", "TCP") != "TCP":
            errors.append(f"port {p['containerPort']} protocol {p['protocol']}")
    names = {p.get("name", "") for p in ports[:1]}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        action = (container.get(kind) or {}).get("httpGet") or (container.get(kind) or {}).get("tcpSocket") or {}
        if isinstance(action.get("port"), str) and action["port"] not in names:
            errors.append(f"{kind} port {action['port']!r} does not match the container port's name")
    return errors


def serving_port(container: dict, protocol: str, knative: bool = False) -> int:
    """The container port KServe routes the protocol to: gRPC to the port named h2c, REST to the
    one named http1, else to the first port. Knative routes to the single declared port (8080 when
    none is), as HTTP/2 when it is named h2c."""
    ports = container.get("ports", [])
    if knative:
        if errors := knative_container_errors(container):
            raise PodCheckError(f"Knative refuses the container: {'; '.join(errors)}")
        port = ports[0] if ports else {"containerPort": KNATIVE_DEFAULT_PORT}
        if (port.get("name") == "h2c") != (protocol == "grpc-v2"):
            raise PodCheckError(f"Knative routes {protocol} to port {port['containerPort']} named "
                                f"{port.get('name', '')!r}")
        return port["containerPort"]
    want = "h2c" if protocol == "grpc-v2" else "http1"
    named = [p["containerPort"] for p in ports if p.get("name") == want]
    if named:
        return named[0]
    if protocol == "grpc-v2" or not ports:
        raise PodCheckError(f"no container port named {want} for protocol {protocol}: {ports}")
    return ports[0]["containerPort"]


# --- where KServe routes a model, and what Knative admits ------------------------------------------

# inferenceservice-config ingress.domainTemplate as KServe v0.20 ships it.
KSERVE_DOMAIN_TEMPLATE = "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}"
TEMPLATE_FIELD = re.compile(r"\{\{\s*\.(Name|Namespace|IngressDomain)\s*\}\}")


def model_host(isvc: dict, domain: str, template: str = KSERVE_DOMAIN_TEMPLATE) -> str:
    """The external host of an InferenceService. Standard mode: KServe's domain template
    (reconcilers/ingress/domain.go GenerateDomainName; field references only here). Knative mode:
    the predictor's Knative host <name>-predictor.<namespace>.<domain> with "-predictor" cut
    (reconcilers/ingress/ingress_reconciler.go getServiceHost)."""
    meta = isvc["metadata"]
    if meta.get("annotations", {}).get("serving.kserve.io/deploymentMode") == "Knative":
        return f"{meta['name']}.{meta['namespace']}.{domain}"
    values = {"Name": meta["name"], "Namespace": meta["namespace"], "IngressDomain": domain}
    host = TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)
    if "{{" in host:
        raise PodCheckError(f"domain template {template!r}: only .Name, .Namespace, .IngressDomain are emulated")
    return host


def predictor_service_ports(container: dict) -> list[dict]:
    """The predictor Service of Standard mode (reconcilers/service/service_reconciler.go): port 80 to
    the container's first port (appProtocol h2c when its name says grpc or h2c), every other port
    at its own number."""
    def app_protocol(port):
        return "kubernetes.io/h2c" if ("grpc" in port.get("name", "") or "h2c" in port.get("name", "")) else None
    ports = container.get("ports") or [{"containerPort": 8080}]
    out = [{"name": ports[0].get("name", ""), "port": 80, "targetPort": ports[0]["containerPort"],
            "appProtocol": app_protocol(ports[0])}]
    out += [{"name": p.get("name", ""), "port": p["containerPort"], "targetPort": p["containerPort"],
             "appProtocol": app_protocol(p)} for p in ports[1:]]
    return out


def gateway_target_port(container: dict, grpc_path: str | None, gateway_api: bool = False) -> int:
    """The container port a request through the ingress gateway reaches in Standard mode. KServe's
    Ingress sends every host's traffic to Service port 80 (kube_ingress_reconciler.go). With Gateway
    API, its HTTPRoute sends gRPC requests whose path is /inference.GRPCInferenceService/* to the
    first h2c/grpc Service port and everything else to the first other port
    (httproute_reconciler.go). `grpc_path`: the request's gRPC path, None for REST."""
    ports = predictor_service_ports(container)
    if not gateway_api:
        return ports[0]["targetPort"]
    grpc = [p for p in ports if p["appProtocol"] == "kubernetes.io/h2c"]
    rest = [p for p in ports if p["appProtocol"] != "kubernetes.io/h2c"]
    if grpc and rest and grpc_path and grpc_path.startswith("/inference.GRPCInferenceService/"):
        return grpc[0]["targetPort"]
    return (rest or ports)[0]["targetPort"]


# Knative Serving's field masks for the pod spec KServe copies into a Knative Service
# (pkg/apis/serving/fieldmask.go): the pod-level securityContext passes only with the feature
# flag kubernetes.podspec-securitycontext=enabled, and then only these fields; a container's
# `privileged` passes from Knative 1.17 on.
KNATIVE_POD_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups"}


def knative_pod_errors(spec: dict, podspec_securitycontext: bool = False,
                       knative: tuple[int, int] = (1, 15)) -> list[str]:
    """Why Knative's webhook would refuse this pod spec (empty when it would not)."""
    errors = []
    allowed = KNATIVE_POD_SECURITY_FIELDS if podspec_securitycontext else set()
    if refused := sorted(set(spec.get("securityContext") or {}) - allowed):
        errors.append(f"pod securityContext {refused} (kubernetes.podspec-securitycontext "
                      f"{'enabled' if podspec_securitycontext else 'disabled'})")
    for c in spec.get("containers", []):
        if "privileged" in (c.get("securityContext") or {}) and knative < (1, 17):
            errors.append(f"container {c['name']}: securityContext.privileged (Knative < 1.17)")
    return errors


KSERVE_DEFAULT_METRICS_PORT = 8080  # metrics_aggregate_injector.go defaultKserveContainerPrometheusPort
KSERVE_AGGREGATION_PORT = 9088  # constants.QueueProxyAggregatePrometheusMetricsPort, on queue-proxy


def aggregated_metrics_port(predictor: dict) -> int:
    """The runtime port that KServe's metric aggregation (Knative mode, queue-proxy) scrapes: the
    predictor's prometheus.kserve.io/port annotation, else 8080."""
    return int(predictor.get("annotations", {}).get("prometheus.kserve.io/port", KSERVE_DEFAULT_METRICS_PORT))

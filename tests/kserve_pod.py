"""What KServe makes of the chart's InferenceService + ServingRuntime, emulated where no cluster
exists: the predictor container (KServe's container merge), its pod (for checkov), and the pod run
locally (`LocalPod`): the storage initializer's copy into /mnt/models, the container's own command,
env and probes, on free loopback ports. Everything taken from the manifest is used as rendered; the
only rewrites are the ones a laptop needs instead of a pod (see `Translation`).

The cluster boundary is the only thing emulated: KServe's controller (merge, storage initializer,
routing to the first/h2c port, Knative's one-port rules). The servers, probes and clients are the real ones.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.process import ServerProcess
from scripts.torchserve import WORKER_FAILURE_MARKERS
from scripts.process import free_ports

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Fields of an InferenceService's predictor.model that are not container fields.
MODEL_ONLY_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "name"}
# Container fields of predictor.model that KServe merges over the runtime's container (and that
# this emulation knows how to merge); any other field fails loudly rather than being ignored.
MERGED_FIELDS = {"ports", "env", "args", "resources"}
# predictor fields that configure KServe itself, not the pod spec.
COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent",
                    "containerConcurrency", "timeout", "batcher", "logger", "labels", "annotations",
                    "deploymentStrategy", "autoScaling", "model"}


class PodCheckError(AssertionError):
    """The rendered manifest does not run or does not serve what it declares."""


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


# --- storage: what the storage initializer puts in /mnt/models ---------------------------------

def storage_initializer(storage_uri: str, claims: dict[str, Path], dest: Path) -> Path:
    """Copy what `storage_uri` names into `dest` (the pod's /mnt/models), the way KServe's storage
    initializer does for pvc://<claim>/<path>: the claim's <path> becomes /mnt/models."""
    m = re.fullmatch(r"pvc://([^/]+)/?(.*)", storage_uri)
    if not m:
        raise PodCheckError(f"{storage_uri}: only pvc:// URIs can be laid out locally")
    claim, path = m.groups()
    if claim not in claims:
        raise PodCheckError(f"{storage_uri}: no PersistentVolumeClaim {claim!r} is rendered or uploaded "
                            f"(have {sorted(claims)})")
    src = claims[claim] / path
    if not src.is_dir():
        raise PodCheckError(f"{storage_uri}: {path or '/'} does not exist in claim {claim} "
                            f"(it holds {sorted(p.name for p in claims[claim].iterdir())})")
    shutil.copytree(src, dest)
    return dest


# --- the pod's container run locally -------------------------------------------------------------

PORT_FLAG = re.compile(r"^--[\w-]*port$")
URL_PORT = re.compile(r"^(\w+://)([^/:]+):(\d+)(.*)$")


@dataclass
class Translation:
    """The only rewrites from pod to laptop: each mount path → a local directory, each port named
    by the manifest → a free loopback port, and bind address 0.0.0.0 → 127.0.0.1 (a pod listens on
    every interface; a shared test machine must not). Nothing is added from our own settings."""
    paths: dict[str, Path]
    ports: dict[int, int] = field(default_factory=dict)

    def port(self, p: int | str) -> int:
        p = int(p)
        while p not in self.ports:
            candidate = free_ports(1)[0]
            if candidate not in self.ports.values():  # the kernel may hand out a port twice
                self.ports[p] = candidate
        return self.ports[p]

    def path(self, s: str) -> str:
        for mount in sorted(self.paths, key=len, reverse=True):
            if s == mount or s.startswith(mount + "/"):
                return str(self.paths[mount]) + s[len(mount):]
        return s

    def value(self, s: str, is_port: bool = False) -> str:
        if is_port:
            return str(self.port(s))
        if s == "0.0.0.0":
            return "127.0.0.1"
        m = URL_PORT.match(s)
        if m:
            scheme, host, port, rest = m.groups()
            return f"{scheme}{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port(port)}{rest}"
        return self.path(s)

    def argv(self, argv: list[str]) -> list[str]:
        out = []
        for i, a in enumerate(argv):
            out.append(self.value(a, is_port=i > 0 and bool(PORT_FLAG.match(argv[i - 1]))))
        return out

    def env(self, env: list[dict]) -> dict[str, str]:
        out = {}
        for e in env:
            if "value" not in e:
                raise PodCheckError(f"env {e['name']}: only literal values can run locally ({e})")
            out[e["name"]] = self.value(e["value"], is_port=e["name"].endswith("_PORT"))
        return out


def bind_addresses(container: dict) -> dict[int, str]:
    """Port → address it binds, as the manifest says: TorchServe's TS_*_ADDRESS (URL or host with
    TS_*_PORT) variables and the KServe-native runtime's --host/--*-port flags."""
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


class LocalPod(ServerProcess):
    """The predictor container's command with its env, in its own process group, ready when the
    manifest's readiness probe (exec or httpGet, run for real) passes. Stopped by PID."""

    name = "predictor container"
    error = PodCheckError
    poll_seconds = 0.5

    def __init__(self, container: dict, translation: Translation, run_dir: Path):
        super().__init__(run_dir, "container.out")
        self.container, self.t = container, translation
        self.home = self.run_dir / "home"
        self.workdir = self.run_dir / "workdir"
        self._argv = self.t.argv([*container.get("command", []), *container.get("args", [])])
        self._env = self.t.env(container.get("env", []))
        self.probe_log: list[str] = []

    def command(self) -> list[str]:
        return self._argv

    def env(self) -> dict[str, str]:
        # A container's environment is the image's (PATH, HOME) plus the manifest's env: nothing from
        # this shell (no TS_*, no PYTHONPATH). The venv's bin stands in for the image's PATH.
        base = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": str(self.home), "LANG": "C.UTF-8"}
        if "JAVA_HOME" in os.environ:
            base["JAVA_HOME"] = os.environ["JAVA_HOME"]
        return {**base, **self._env}

    def cwd(self) -> Path:
        # The KServe-native image's WORKDIR holds this checkout's scripts/, handlers/ and model/
        # (Dockerfile.kserve-native); TorchServe's runs in an empty working directory.
        if self._argv[1:3] == ["-m", "scripts.kserve_runtime"]:
            return REPO
        return self.workdir

    def start(self, timeout: float = 120) -> "LocalPod":
        for d in (self.home, self.workdir, *self.t.paths.values()):
            Path(d).mkdir(parents=True, exist_ok=True)
        return super().start(timeout)

    def probe(self, kind: str) -> tuple[bool, str]:
        """Run the container's probe once: (passed, why)."""
        spec = self.container.get(kind)
        if not spec:
            raise PodCheckError(f"container has no {kind}")
        if "exec" in spec:
            try:
                proc = subprocess.run(self.t.argv(spec["exec"]["command"]), env=self.env(), cwd=self.cwd(),
                                      capture_output=True, text=True, timeout=spec.get("timeoutSeconds", 1) + 5)
            except subprocess.TimeoutExpired:
                return False, "exec probe timed out"
            return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-300:]
        if "httpGet" in spec:
            get = spec["httpGet"]
            url = f"http://127.0.0.1:{self.t.port(get['port'])}{get.get('path', '/')}"
            try:
                r = requests.get(url, timeout=spec.get("timeoutSeconds", 1))
            except requests.RequestException as e:
                return False, f"GET {url}: {type(e).__name__}"
            return 200 <= r.status_code < 400, f"GET {url}: {r.status_code}"
        raise PodCheckError(f"{kind}: only exec and httpGet probes are emulated: {spec}")

    def ready(self) -> bool:
        ok, why = self.probe("readinessProbe")
        self.probe_log.append(why)
        return ok

    def failure(self) -> str | None:
        if not self.log_file.exists():
            return None
        text = self.log_file.read_text(errors="replace")
        if any(marker in text for marker in WORKER_FAILURE_MARKERS):
            return "a model failed to load:\n" + self.log_tail(40)
        return None

    def wait_ready(self, timeout: float) -> None:
        try:
            super().wait_ready(timeout)
        except PodCheckError as e:
            raise PodCheckError(f"{e}\nlast readiness probe: {self.probe_log[-1:] or 'never ran'}") from None

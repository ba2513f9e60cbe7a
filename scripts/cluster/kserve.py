"""KServe's controller manager (tier 2 of the real-Kubernetes issue): built from the kserve Go
module at the release of ../shared/crds (build.KSERVE_VERSION), installed into a running control
plane (scripts/cluster/control_plane.py) and run as a process on loopback.

Build: the module's source (Go's module cache, via the Go module proxy) is copied to a writable
folder and `cmd/manager` is built with the module's own go.mod as the main module (its replace
lines pin controller-runtime and the k8s.io libraries; they only count in the main module). The
binary goes into the same versioned cache as the control plane's: a folder named after the
KServe release and a hash of this file's build recipe, so a second build finds it in seconds.

Install (`KServe.install`), all from the same module source:
- the `kserve` namespace and KServe's CRDs from config/crd/full (server-side apply: the
  InferenceService CRD is ~2 MB, too big for client-side apply's annotation);
- the `inferenceservice-config` ConfigMap, generated from config/configmap/inferenceservice.yaml
  with the minimal edits of `configmap()` (each one says why);
- the webhook configurations of config/webhook/manifests.yaml, rewritten to
  `url: https://127.0.0.1:<port>/<path>` with the caBundle of a locally made CA whose serving
  certificate (IP SAN 127.0.0.1) the manager serves (no kube-proxy, no cert-manager here);
- the ClusterStorageContainer `default` of config/storagecontainers (what KServe's own install
  applies), so its storage-initializer injection finds the supported URI formats;
- KEDA's ScaledObject CRD, from the KEDA module KServe's go.mod requires (KEDA_MODULE): KServe's
  manager looks for it when it starts and only then turns an InferenceService with
  `autoscalerClass: keda` into a ScaledObject. No KEDA operator runs here (nothing scales).

Run: `KServe.start` runs the manager with POD_NAMESPACE=kserve, the admin kubeconfig, free
loopback ports for metrics, health probes and webhooks, and TMPDIR pointing at a folder whose
k8s-webhook-server/serving-certs/ holds the serving certificate (controller-runtime's default
CertDir). Ready = /healthz and /readyz answer ok and the webhook port completes a TLS handshake
with the CA. Stopped by PID (the state file says which, the command line names the state folder).

Standard mode only: Knative mode needs Knative Serving, which is out of scope here (it keeps its
schema checks in tests/cluster/test_cluster.py and tests/deploy/kserve_pod.py's Knative rules).
"""
from __future__ import annotations

import base64
import copy
import fcntl
import hashlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from scripts.cluster import build, certs
from scripts.cluster.control_plane import ControlPlane, port_taken
from scripts.serve.process import free_ports, process_names, stop_process_group

MODULE = build.KSERVE_MODULE
VERSION = build.KSERVE_VERSION
NAMESPACE = "kserve"  # POD_NAMESPACE: where the manager reads inferenceservice-config
BINARY = "kserve-manager"
# The recipe: what is built and how. Its hash names the cache folder, so changing any of it
# builds a new binary beside the old one.
PACKAGE = "./cmd/manager"
GO_BUILD_FLAGS = ("-trimpath", "-ldflags", "-s -w")
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_CRD = "config/crd/bases/keda.sh_scaledobjects.yaml"
# KServe's CRDs the manager watches or its webhooks and controllers read (config/crd/full).
CRD_FILES = (
    "serving.kserve.io_inferenceservices.yaml",
    "serving.kserve.io_servingruntimes.yaml",
    "serving.kserve.io_clusterservingruntimes.yaml",
    "serving.kserve.io_trainedmodels.yaml",
    "serving.kserve.io_inferencegraphs.yaml",
    "serving.kserve.io_clusterstoragecontainers.yaml",
)
# The storage initializer image of the ConfigMap: a fixed tag, never :latest (pull policy Always).
STORAGE_INITIALIZER_IMAGE = f"kserve/storage-initializer:{VERSION}"
PORT_NAMES = ("metrics", "health", "webhook")


class KServeError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"kserve-build: {message}", flush=True)


# --- build ---------------------------------------------------------------------------------------

def recipe_hash() -> str:
    recipe = json.dumps({"module": MODULE, "version": VERSION, "package": PACKAGE,
                         "flags": GO_BUILD_FLAGS, "env": build.GO_ENV}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def bin_dir() -> Path:
    return build.cache_root() / f"kserve-{VERSION}-{recipe_hash()}"


def binary() -> Path:
    return bin_dir() / BINARY


def is_built() -> bool:
    return binary().exists()


def source() -> Path:
    """The kserve module's source at VERSION (read-only, in Go's module cache)."""
    return build.module_source(MODULE, VERSION)


def _writable_copy(src: Path, dst: Path) -> None:
    """Go's module cache is read-only: the build needs a writable copy (go may touch go.sum)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "docs", "hack", "python",
                                                              "test", "charts"))
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    dst.chmod(dst.stat().st_mode | stat.S_IWUSR)


def build_manager(force: bool = False) -> Path:
    """Build KServe's manager unless the cache has it; returns its path. A lock keeps two builds
    from racing on the same folder."""
    if is_built() and not force:
        return binary()
    go = build.find_go()
    target = bin_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".kserve-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built() and not force:
            return binary()
        src = source()
        log(f"building KServe {VERSION} {PACKAGE} from {src} into {target}; the first build "
            "takes minutes on 2 cores (later runs reuse it)")
        start = time.monotonic()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        work = tmp / "src"
        _writable_copy(src, work)
        env = dict(os.environ, **build.GO_ENV)
        env.setdefault("GOTOOLCHAIN", "local")
        cmd = [go, "build", *GO_BUILD_FLAGS, "-o", str(tmp / BINARY), PACKAGE]
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join(proc.stdout.splitlines()[-40:])
            raise build.BuildError(f"go build {PACKAGE} of {MODULE}@{VERSION} failed (exit "
                                   f"{proc.returncode}) after {time.monotonic() - start:.0f} s:\n{tail}")
        shutil.rmtree(work)
        (tmp / "VERSION").write_text(f"kserve {VERSION}\nrecipe {recipe_hash()}\n"
                                     f"{subprocess.run([go, 'version'], capture_output=True, text=True).stdout}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        log(f"built in {time.monotonic() - start:.0f} s: {binary()} "
            f"({binary().stat().st_size / 2**20:.0f} MiB)")
    return binary()


# --- manifests -----------------------------------------------------------------------------------

def _latest_to_version(image: str) -> str:
    return image[: -len(":latest")] + f":{VERSION}" if image.endswith(":latest") else image


def configmap(src: Path) -> dict:
    """inferenceservice-config from the module's config/configmap/inferenceservice.yaml, with
    these edits (everything else as released):
    1. deploy.defaultDeploymentMode Serverless -> Standard: no Knative Serving here; our
       InferenceServices also say Standard in their annotation.
    2. every `<image>:latest` (storageInitializer, agent, logger, batcher, router,
       localModel.defaultJobImage) -> `<image>:VERSION`, and explainers' defaultImageVersion
       latest -> VERSION: a :latest tag means imagePullPolicy Always, which never works offline,
       and the release's own images carry its version tag.
    The pod mutator needs storageInitializer, agent, logger and batcher with valid cpu/memory
    quantities, and the manager needs ingress.ingressGateway even in Standard mode: the released
    values have them, unchanged."""
    cm = yaml.safe_load((src / "config/configmap/inferenceservice.yaml").read_text())
    data = cm["data"]
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = "Standard"  # edit 1
    data["deploy"] = json.dumps(deploy, indent=2)
    for key in ("storageInitializer", "agent", "logger", "batcher", "router"):  # edit 2
        value = json.loads(data[key])
        value["image"] = _latest_to_version(value["image"])
        data[key] = json.dumps(value, indent=2)
    local = json.loads(data["localModel"])
    local["defaultJobImage"] = _latest_to_version(local["defaultJobImage"])
    data["localModel"] = json.dumps(local, indent=2)
    explainers = json.loads(data["explainers"])
    for spec in explainers.values():
        if spec.get("defaultImageVersion") == "latest":
            spec["defaultImageVersion"] = VERSION
    data["explainers"] = json.dumps(explainers, indent=2)
    cm["metadata"]["namespace"] = NAMESPACE
    return cm


def storage_container(src: Path) -> dict:
    """The ClusterStorageContainer `default` (config/storagecontainers): its image is a
    placeholder that KServe's kustomization replaces with kserve/storage-initializer:latest; here
    the same fixed tag as the ConfigMap's. The pod mutator reads it for URIs it supports (s3://,
    gs://, hf://, https://...); pvc:// and oci:// never use it."""
    obj = yaml.safe_load((src / "config/storagecontainers/default.yaml").read_text())
    obj["spec"]["container"]["image"] = STORAGE_INITIALIZER_IMAGE
    return obj


def webhooks(src: Path, port: int, ca_bundle: bytes) -> list[dict]:
    """config/webhook/manifests.yaml with each clientConfig.service (the kserve-webhook-server
    Service, which needs kube-proxy and a pod) replaced by `url: https://127.0.0.1:<port><path>`
    and the caBundle of our CA, as envtest's ModifyWebhookDefinitions does. Rules, selectors,
    failure policies and reinvocation as released."""
    out = []
    for doc in yaml.safe_load_all((src / "config/webhook/manifests.yaml").read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("creationTimestamp", None)
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": base64.b64encode(ca_bundle).decode()}
        out.append(doc)
    return out


def crds(src: Path) -> list[Path]:
    """KServe's CRDs, then KEDA's ScaledObject CRD at the version KServe's go.mod requires."""
    folder = src / "config/crd/full"
    found = {p.name: p for p in folder.rglob("*.yaml")}
    missing = [name for name in CRD_FILES if name not in found]
    if missing:
        raise KServeError(f"{folder} lacks {missing}")
    keda = build.module_source(KEDA_MODULE, build.pinned_version(KEDA_MODULE, src / "go.mod")) / KEDA_CRD
    if not keda.is_file():
        raise KServeError(f"{keda} is missing")
    return [found[name] for name in CRD_FILES] + [keda]


# --- the running manager -------------------------------------------------------------------------



@dataclass
class ManagerState:
    ports: dict[str, int]
    binary: str
    pid: int = 0
    started_at: float = 0.0
    start_seconds: float = 0.0
    webhooks: list[str] = field(default_factory=list)


class KServe:
    """KServe's manager for the control plane `plane`. Its files live in <plane.dir>/kserve:
    pki/ (webhook CA and serving certificate), tmp/k8s-webhook-server/serving-certs/ (the
    manager's TMPDIR), manifests/ (what was applied), state.json; its log in
    <plane.dir>/logs/kserve-manager.log."""

    def __init__(self, plane: ControlPlane, ports: dict[str, int] | None = None):
        self.plane = plane
        self.dir = plane.dir / "kserve"
        self.pki = self.dir / "pki"
        self.tmp = self.dir / "tmp"
        self.cert_dir = self.tmp / "k8s-webhook-server" / "serving-certs"
        self.manifests = self.dir / "manifests"
        self.state_file = self.dir / "state.json"
        self.log_file = plane.logs / f"{BINARY}.log"
        self._child: subprocess.Popen | None = None
        state = self.load()
        self.ports = dict(ports or (state.ports if state else dict(zip(PORT_NAMES, free_ports(3)))))

    # --- state --------------------------------------------------------------------------------
    def load(self) -> ManagerState | None:
        try:
            return ManagerState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, state: ManagerState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def running(self) -> int | None:
        state = self.load()
        return state.pid if state and state.pid and process_names(state.pid, str(self.plane.dir), BINARY) else None

    # --- kubectl ------------------------------------------------------------------------------
    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 180) -> subprocess.CompletedProcess:
        if not build.KUBECTL.exists():
            raise KServeError(f"{build.KUBECTL} missing: run `bash scripts/setup.sh`")
        proc = subprocess.run([str(build.KUBECTL), f"--kubeconfig={self.plane.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KServeError(f"kubectl {' '.join(args[:4])}: {proc.stderr.strip()[-1500:]}")
        return proc

    def apply(self, objs: list[dict], name: str) -> None:
        """Server-side apply, the manifest kept in manifests/<name>.yaml for reading."""
        self.manifests.mkdir(parents=True, exist_ok=True)
        path = self.manifests / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kserve-install",
                     "-f", str(path))

    # --- install ------------------------------------------------------------------------------
    def make_certs(self) -> None:
        """A CA of its own and the webhook server's certificate (IP SAN 127.0.0.1: the URL the
        API server calls), in the file names controller-runtime reads."""
        if not (self.pki / "webhook.crt").exists():
            shutil.rmtree(self.pki, ignore_errors=True)
            self.pki.mkdir(parents=True)
            certs.make_ca(self.pki, "webhook-ca", "image-classifier-kserve-webhook-ca")
            certs.issue(self.pki, "webhook", "webhook-ca", "kserve-webhook-server", server=True,
                        dns=("localhost",), ips=("127.0.0.1",))
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.pki / "webhook.crt", self.cert_dir / "tls.crt")
        shutil.copy(self.pki / "webhook.key", self.cert_dir / "tls.key")

    def install(self, src: Path, timeout: float = 120) -> None:
        """What the manager needs before it starts: its CRDs (Established), its namespace, its
        ConfigMap and the ClusterStorageContainer."""
        args = ["apply", "--server-side", "--force-conflicts", "--field-manager=kserve-install"]
        for path in crds(src):
            args += ["-f", str(path)]
        self.kubectl(*args)
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in crds(src)]
        self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                     *(f"crd/{n}" for n in names))
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        self.apply([namespace, configmap(src)], "config")
        deadline = time.monotonic() + timeout
        while True:  # the new kind may be served a moment after Established
            try:
                self.apply([storage_container(src)], "storagecontainer")
                break
            except KServeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def register_webhooks(self, src: Path) -> list[str]:
        objs = webhooks(src, self.ports["webhook"], (self.pki / "webhook-ca.crt").read_bytes())
        self.apply(objs, "webhooks")
        return [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objs]

    def unregister_webhooks(self, names: list[str]) -> None:
        """Best effort: a webhook with failurePolicy Fail whose server is gone would refuse every
        InferenceService (and every KServe pod) of the still-running control plane."""
        if names:
            self.kubectl("delete", "--ignore-not-found", "--wait=false", *names, check=False,
                         timeout=30)

    # --- process ------------------------------------------------------------------------------
    def command(self, binary_path: Path) -> list[str]:
        p = self.ports
        return [str(binary_path), f"--kubeconfig={self.plane.kubeconfig}",
                f"--metrics-addr=127.0.0.1:{p['metrics']}",
                f"--health-probe-addr=127.0.0.1:{p['health']}",
                f"--webhook-port={p['webhook']}", "--leader-elect=false"]

    def env(self) -> dict[str, str]:
        # POD_NAMESPACE: where it reads inferenceservice-config; TMPDIR: controller-runtime's
        # default webhook CertDir is $TMPDIR/k8s-webhook-server/serving-certs.
        return dict(os.environ, POD_NAMESPACE=NAMESPACE, TMPDIR=str(self.tmp),
                    KUBECONFIG=str(self.plane.kubeconfig))

    def healthy(self) -> tuple[bool, str]:
        for path in ("/healthz", "/readyz"):
            url = f"http://127.0.0.1:{self.ports['health']}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = resp.read().decode(errors="replace").strip()
            except urllib.error.HTTPError as err:
                return False, f"{path}: HTTP {err.code}"
            except OSError as err:
                return False, f"{path}: {getattr(err, 'reason', err)}"
            if body != "ok":
                return False, f"{path}: {body[:200]}"
        try:  # the webhook port speaks TLS with the certificate our CA signed for 127.0.0.1
            ctx = ssl.create_default_context(cafile=str(self.pki / "webhook-ca.crt"))
            with socket.create_connection(("127.0.0.1", self.ports["webhook"]), timeout=5) as sock:
                with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                    pass
        except (OSError, ssl.SSLError) as err:
            return False, f"webhook port {self.ports['webhook']}: {err}"
        return True, "ok"

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = 180, log=print) -> ManagerState:
        """Build (or find) the manager, install what it needs, start it, wait until it is
        ready, then register its webhooks. Already running: its state, unchanged."""
        if self.running():
            return self.load()
        if not self.plane.running():
            raise KServeError(f"no control plane runs from {self.plane.dir}: start it first")
        taken = [f"{n} port {p}" for n, p in self.ports.items() if port_taken(p)]
        if taken:  # ports of an earlier run may be taken now: take free ones
            self.ports = dict(zip(PORT_NAMES, free_ports(3)))
        exe = build_manager()
        src = source()
        begin = time.monotonic()
        self.make_certs()
        self.install(src)
        log(f"kserve: CRDs, namespace {NAMESPACE}, inferenceservice-config installed "
            f"({time.monotonic() - begin:.1f} s)")
        self.plane.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_file, "ab") as out:
            self._child = subprocess.Popen(self.command(exe), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=self.dir, env=self.env(),
                                           start_new_session=True)
        state = ManagerState(ports=self.ports, binary=str(exe), pid=self._child.pid,
                             started_at=time.time())
        self.save(state)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self._child.poll() is not None:
                    raise KServeError(f"{BINARY} exited with {self._child.returncode} before it was "
                                      f"ready; last lines of {self.log_file}:\n{self.log_tail()}")
                ok, detail = self.healthy()
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise KServeError(f"{BINARY} not ready after {timeout:.0f} s ({detail}); last "
                                      f"lines of {self.log_file}:\n{self.log_tail()}")
                time.sleep(0.3)
            state.start_seconds = round(time.monotonic() - t0, 2)
            state.webhooks = self.register_webhooks(src)
            self.save(state)
        except BaseException:
            self.stop(log=lambda *_: None)
            raise
        log(f"kserve: {BINARY} ready in {state.start_seconds:.1f} s (pid {state.pid}; metrics "
            f"{self.ports['metrics']}, health {self.ports['health']}, webhooks "
            f"{self.ports['webhook']})")
        return state

    def stop(self, log=print) -> bool:
        state = self.load()
        if state is None:
            return False
        if self.plane.running():
            self.unregister_webhooks(state.webhooks)
        pid = self.running()
        if pid:
            stop_process_group(pid, timeout=20)
            log(f"kserve: stopped {BINARY} (pid {pid})")
        if self._child is not None:
            try:
                self._child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        state.pid, state.webhooks = 0, []
        self.save(state)
        return pid is not None

    def memory(self) -> int:
        pid = self.running()
        if not pid:
            return 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m scripts.cluster kserve-build [--force] [--print-dir]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.cluster kserve-build",
                                     description="build KServe's controller manager into the cache")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    parser.add_argument("--print-dir", action="store_true", help="print the cache folder and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(bin_dir())
        return 0
    t0 = time.monotonic()
    try:
        path = build_manager(force=args.force)
    except (build.BuildError, KServeError) as err:
        print(f"kserve-build: error: {err}", file=sys.stderr)
        return 1
    log(f"ready: {path} (KServe {VERSION}; {time.monotonic() - t0:.1f} s)")
    return 0

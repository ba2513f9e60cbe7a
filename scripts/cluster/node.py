"""A worker Node for the local control plane: Debian's containerd (1.6) with runc and the CNI
plugins, and the kubelet from the cluster's multi-call binary (same Kubernetes release).

Everything of the node lives in its own folders so it never disturbs podman or anything else:

- containerd: build/cluster/containerd/ (config.toml, root/, state/, containerd.sock, log). It is
  shared by all nodes of this checkout and kept between runs, so imported images stay imported
  (`ctr -n k8s.io images import`); its CNI network is a bridge `cni-ic0` on 10.244.0.0/24 with
  host-local IPAM whose data lives in the same folder.
- the kubelet: <plane state dir>/node/ (config, kubeconfig of `system:node:<name>` in
  `system:nodes` signed by the cluster CA: no bootstrap tokens, root dir, pod logs, log).

Facts of these machines (../shared/notes/cluster-notes.md, "kubelet on these machines") decide the
configuration: cgroups v1 hybrid (`failCgroupV1: false`), `cgroupDriver: cgroupfs`, no
CAP_SYS_RESOURCE (`oomScoreAdj: 0`, containerd `restrict_oom_score_adj`), kernel tunables set
before the kubelet starts (and set back on stop), a pause image built from Kubernetes' own
build/pause/linux/pause.c.

One node per machine at a time (one containerd folder, one bridge, one pod range). `stop` ends the
kubelet, then containerd after killing every pod container, and leaves the host as it found it:
the pods' network namespaces and veths, the kubelet's and containerd's mounts, libcni's cached
results of our network, the /var/log/containers links and the host folders that containerd 1.6
and the kubelet create whatever their configuration (recorded before the first start, removed
when empty), and the kernel tunables set back. Images stay in containerd's root for the next start.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import io
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.cluster import build, certs
from scripts.cluster.control_plane import ClusterError, ControlPlane
from scripts.serve.process import free_ports, process_names, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
CONTAINERD_DIR = Path(os.environ.get("CLUSTER_CONTAINERD_DIR") or ROOT / "build" / "cluster" / "containerd")
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_BRIDGE = "cni-ic0"
POD_CIDR = "10.244.0.0/24"
PAUSE_VERSION = "3.10.1"  # k8s.io/kubernetes build/pause/Makefile TAG of the pinned release
PAUSE_IMAGE = f"registry.example.com/image-classifier/pause:{PAUSE_VERSION}"
NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin
# The kubelet exits unless it can set these (pkg/kubelet/cm/container_manager_linux.go); set
# here before it starts, set back on stop.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Folders outside ours that containerd 1.6's CRI plugin and the kubelet create whatever their
# configuration (libcni's result cache, network namespaces, the shim sockets, the device-plugin
# socket, the /var/log/containers links): removed on stop when they did not exist before and are empty.
HOST_DIRS = ("/var/lib/cni/results", "/var/lib/cni", "/run/netns", "/run/containerd/s",
             "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd",
             "/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers")
DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "gcc", "iproute2")


def log_default(message: str) -> None:
    print(f"node: {message}", flush=True)


def which(exe: str, package: str) -> str:
    path = shutil.which(exe)
    if path is None:
        raise ClusterError(f"{exe} is missing (Debian package `{package}`)")
    return path


# --- containerd -------------------------------------------------------------------------------
def image_store() -> Path:
    """containerd's root (its images: ~14 GB with both runtimes) in the cache folder, outside any
    checkout: a new clone's node finds the imported images instead of importing them again."""
    return build.cache_root().parent / "containerd-root"


class Containerd:
    def __init__(self, folder: Path = CONTAINERD_DIR, root: Path | None = None):
        self.dir = Path(folder).resolve()
        self.root = root or image_store()
        self.config = self.dir / "config.toml"
        self.socket = self.dir / "containerd.sock"
        self.pid_file = self.dir / "containerd.pid"
        self.log = self.dir / "containerd.log"
        self.cni_conf_dir = self.dir / "cni" / "net.d"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        d = self.dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        self.config.write_text(f"""\
# containerd for the local node (scripts/cluster/node.py): own root, state and socket.
version = 2
root = "{self.root}"
state = "{d / 'state'}"
oom_score = 0

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: never lower a container's oom_score_adj below ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{which('runc', 'runc')}"
        Root = "{d / 'state' / 'runc'}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.cni_conf_dir}"
    max_conf_num = 1
""")
        conflist = {
            "cniVersion": "0.4.0", "name": "image-classifier-node",
            "plugins": [
                {"type": "bridge", "bridge": CNI_BRIDGE, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(d / "cni" / "ipam"),
                          "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
            ],
        }
        (self.cni_conf_dir / "10-image-classifier.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_names(pid, str(self.config)) else None

    def ctr(self, *args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([which("ctr", "containerd"), f"--address={self.socket}",
                               "-n", NAMESPACE, *args], capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)}: {proc.stderr.strip()[-800:]}")
        return proc

    def ready(self) -> bool:
        return self.socket.exists() and self.ctr("version", check=False, timeout=10).returncode == 0

    def start(self, timeout: float = 60, log=log_default) -> int:
        pid = self.pid()
        if pid:
            return pid
        exe = which("containerd", "containerd")
        self.write_config()
        self.record_host_dirs()
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            proc = subprocess.Popen([exe, f"--config={self.config}"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise ClusterError(f"containerd exited with {proc.returncode}:\n{tail(self.log)}")
            if self.ready():
                log(f"containerd ready ({time.monotonic() - t0:.1f} s, {self.socket})")
                return proc.pid
            time.sleep(0.3)
        raise ClusterError(f"containerd not ready after {timeout} s:\n{tail(self.log)}")

    def has_image(self, ref: str) -> bool:
        return self.image_config_digest(ref) is not None

    def image_config_digest(self, ref: str) -> str | None:
        """The config digest (an image's ID) of `ref` in containerd, or None when it has no such tag."""
        rows = [line.split() for line in self.ctr("images", "ls", check=False).stdout.splitlines()[1:] if line.strip()]
        manifest = next((row[2] for row in rows if row[0] == ref), None)
        if manifest is None:
            return None
        content = json.loads(self.ctr("content", "get", manifest).stdout)
        if "manifests" in content:  # an index: the first (only) platform's manifest
            content = json.loads(self.ctr("content", "get", content["manifests"][0]["digest"]).stdout)
        return content["config"]["digest"]

    def remove_all_containers(self) -> list[str]:
        """Kill and delete every task and container of the CRI namespace (what a stopped kubelet
        left behind); returns the network namespaces of their pod sandboxes."""
        netns = set()
        ids = self.ctr("containers", "ls", "-q", check=False).stdout.split()
        for cid in ids:
            info = self.ctr("containers", "info", cid, check=False).stdout
            try:
                spec = json.loads(info).get("Spec") or {}
            except ValueError:
                continue
            for ns in (spec.get("linux") or {}).get("namespaces") or []:
                if ns.get("type") == "network" and ns.get("path", "").startswith(("/var/run/netns/", "/run/netns/")):
                    netns.add(ns["path"].replace("/var/run/", "/run/"))
        for line in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
        time.sleep(1)
        for line in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "delete", "-f", line, check=False)
        for cid in ids:
            self.ctr("containers", "delete", cid, check=False)
        return sorted(netns)

    def stop(self, log=log_default) -> bool:
        pid = self.pid()
        if not pid:
            self.clean_host(())
            return False
        netns = self.remove_all_containers()
        stop_process_group(pid, timeout=20)
        self.pid_file.unlink(missing_ok=True)
        self.clean_host(netns)
        log(f"stopped containerd (pid {pid}); removed {len(netns)} pod network namespaces")
        return True

    def clean_host(self, netns) -> None:
        """What containerd's CRI plugin leaves outside its own folders once no pod runs: the
        pods' network namespaces (their veths go with them), mounts under its folders, the CNI
        result cache of our network, and the folders it created (recorded at first start)."""
        for path in netns:
            subprocess.run(["umount", path], capture_output=True)
            Path(path).unlink(missing_ok=True)
        for target in sorted(mounts_under(self.dir), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        results = Path("/var/lib/cni/results")
        if results.is_dir():
            for entry in results.iterdir():
                if entry.name.startswith(("image-classifier-node-", "cni-loopback-")):
                    entry.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "cni" / "ipam", ignore_errors=True)  # no pod holds an address now
        subprocess.run(["ip", "link", "delete", CNI_BRIDGE], capture_output=True)
        remove_created_dirs(self.dir / "created-host-dirs.json")

    def record_host_dirs(self) -> None:
        """Before the first start: which of the host folders that containerd and the kubelet
        create outside their configured ones do not exist yet (stop removes those, when empty)."""
        record = self.dir / "created-host-dirs.json"
        created = [] if not record.exists() else json.loads(record.read_text())
        created += [d for d in HOST_DIRS if not Path(d).exists() and d not in created]
        record.write_text(json.dumps(created, indent=1) + "\n")

    # --- the pause image ----------------------------------------------------------------------
    def ensure_pause_image(self, log=log_default) -> None:
        if self.has_image(PAUSE_IMAGE):
            return
        t0 = time.monotonic()
        src = build.module_source("k8s.io/kubernetes", build.kubernetes_version()) / "build" / "pause" / "linux" / "pause.c"
        work = self.dir / "pause"
        work.mkdir(parents=True, exist_ok=True)
        exe = work / "pause"
        proc = subprocess.run([which("gcc", "gcc"), "-Os", "-Wall", "-Werror", "-static",
                               f"-DVERSION=v{PAUSE_VERSION}-image-classifier", "-o", str(exe),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError(f"gcc pause.c failed: {proc.stderr[-800:]}")
        subprocess.run(["strip", str(exe)], check=False)
        archive = work / "pause.tar"
        write_oci_archive(archive, exe, PAUSE_IMAGE)
        self.ctr("images", "import", "--all-platforms", str(archive))
        log(f"pause image {PAUSE_IMAGE} built and imported ({time.monotonic() - t0:.1f} s)")

    def import_podman_image(self, ref: str, log=log_default) -> float:
        """`podman save` | `ctr images import`, streamed (no archive on disk); returns seconds (0
        when containerd already has this very image: same tag and same image ID as podman's)."""
        podman_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                                   text=True, env=podman_env()).stdout.strip()
        if podman_id and self.image_config_digest(ref) == f"sha256:{podman_id}":
            return 0.0
        t0 = time.monotonic()
        save = subprocess.Popen(["podman", "save", "--format=docker-archive", ref],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=podman_env())
        imp = subprocess.run([which("ctr", "containerd"), f"--address={self.socket}", "-n",
                              NAMESPACE, "images", "import", "-"],
                             stdin=save.stdout, capture_output=True, text=True)
        save.stdout.close()
        err = save.stderr.read().decode(errors="replace")
        save.wait()
        if save.returncode != 0 or imp.returncode != 0:
            raise ClusterError(f"import of {ref} failed: podman save: {err[-500:]} "
                               f"ctr import: {imp.stderr[-500:]}")
        took = time.monotonic() - t0
        log(f"imported {ref} into containerd in {took:.0f} s")
        return took


def podman_env() -> dict[str, str]:
    conf = ROOT / "build" / "containers" / "containers.conf"
    env = dict(os.environ)
    if conf.exists():
        env.setdefault("CONTAINERS_CONF", str(conf))
    return env


def write_oci_archive(archive: Path, exe: Path, ref: str) -> None:
    """A one-layer image FROM scratch holding /pause, USER 65535:65535, as an OCI image layout
    tarball with the ref annotation `ctr images import` names it by."""
    import hashlib

    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as tar:
        info = tarfile.TarInfo("pause")
        data = exe.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"User": "65535:65535", "Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}}]}).encode()
    with tarfile.open(archive, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest.split(':')[1]}", data)


def mounts_under(folder: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(folder) or target.startswith(str(folder) + "/"):
            out.append(target)
    return out


def remove_created_dirs(record: Path) -> None:
    try:
        created = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):
        return
    for folder in created:  # deepest first, as listed
        path = Path(folder)
        if not path.is_dir():
            continue
        if path == Path("/var/lib/kubelet/device-plugins"):
            (path / "kubelet.sock").unlink(missing_ok=True)
        if path == Path("/run/netns") and not any(path.iterdir()):
            subprocess.run(["umount", str(path)], capture_output=True)  # CRI makes it a shared mount
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: someone else's files are there now


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def first_fatal(path: Path) -> str | None:
    """The kubelet's first fatal line: klog's `F` or `E` ... `command failed`/`Failed to run`."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("F") or "command failed" in line or "Failed to run kubelet" in line:
            return line
    return None


# --- kernel tunables --------------------------------------------------------------------------
def set_kernel_tunables() -> dict[str, str]:
    """Set the kubelet's kernel tunables; returns the values they had."""
    before = {}
    for key, value in KERNEL_TUNABLES.items():
        path = Path("/proc/sys") / key
        old = path.read_text().strip()
        before[key] = old
        if old != value:
            path.write_text(value + "\n")
    return before


def restore_kernel_tunables(before: dict[str, str]) -> None:
    for key, value in before.items():
        try:
            (Path("/proc/sys") / key).write_text(value + "\n")
        except OSError:
            pass


# --- the kubelet ------------------------------------------------------------------------------
class Node:
    def __init__(self, plane: ControlPlane, name: str | None = None,
                 containerd: Containerd | None = None):
        self.plane = plane
        self.name = (name or socket.gethostname()).lower()
        self.dir = plane.dir / "node"
        self.root_dir = self.dir / "kubelet"
        self.log = self.dir / "kubelet.log"
        self.state_file = self.dir / "state.json"
        self.config = self.dir / "kubelet-config.yaml"
        self.kubeconfig = self.dir / "kubelet.kubeconfig"
        self.containerd = containerd or Containerd()
        self.proc: subprocess.Popen | None = None

    def load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def pid(self) -> int | None:
        pid = self.load().get("pid")
        return pid if pid and process_names(pid, str(self.dir)) else None

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pod-logs").mkdir(exist_ok=True)
        stem = f"kubelet-{self.name}"
        pki = self.plane.pki
        if not (pki / f"{stem}.crt").exists():
            certs.issue(pki, stem, "ca", f"system:node:{self.name}", ("system:nodes",), client=True)
        self.plane.write_kubeconfig(self.kubeconfig, f"system:node:{self.name}", stem, embed=False)
        port, healthz = free_ports(2)
        self.ports = {"kubelet": port, "healthz": healthz}
        self.config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "0.0.0.0", "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": False},
                               "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": self.containerd.endpoint,
            "podLogsDir": str(self.dir / "pod-logs"),
            "clusterDomain": "cluster.local",
            "clusterDNS": [],
            "resolvConf": "/etc/resolv.conf",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%",
                             "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
            "evictionPressureTransitionPeriod": "5s",
            "serializeImagePulls": False,
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            "localStorageCapacityIsolation": False,
            "podCIDR": POD_CIDR,
            "registerNode": True,
        }, indent=2) + "\n")

    def command(self) -> list[str]:
        state = self.plane.load()
        bin_dir = Path(state.bin_dir) if state else build.bin_dir()
        return [str(bin_dir / "kubelet"), f"--config={self.config}",
                f"--kubeconfig={self.kubeconfig}", f"--root-dir={self.root_dir}",
                f"--cert-dir={self.dir / 'pki'}", f"--hostname-override={self.name}", "--v=1"]

    def start(self, timeout: float = 120, log=log_default) -> dict:
        if self.pid():
            return self.load()
        t0 = time.monotonic()
        self.containerd.start(log=log)
        self.containerd.ensure_pause_image(log=log)
        self.prepare()
        self.grant_apiserver_kubelet_access()
        before = self.load().get("tunables") or set_kernel_tunables()
        state = {"name": self.name, "ports": self.ports, "tunables": before}
        self.save(state)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         start_new_session=True)
        state["pid"] = self.proc.pid
        self.save(state)
        try:
            self.wait_ready(timeout, t0, log)
        except BaseException:
            self.stop(log=lambda *_: None)
            raise
        state["start_seconds"] = round(time.monotonic() - t0, 2)
        self.save(state)
        return state

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.plane.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.plane.pki / "admin.crt"), str(self.plane.pki / "admin.key"))
        return ctx

    def node_object(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.plane.server}/api/v1/nodes/{self.name}",
                                        context=self._tls(), timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def grant_apiserver_kubelet_access(self) -> None:
        """Bind the API server's kubelet client (certs.py) to system:kubelet-api-admin, so that
        logs, exec and port-forward reach the kubelet (its authorization is Webhook)."""
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "image-classifier:apiserver-kubelet-client"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "system:kubelet-api-admin"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": "kube-apiserver-kubelet-client"}]}
        req = urllib.request.Request(
            f"{self.plane.server}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            data=json.dumps(binding).encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, context=self._tls(), timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # already there
                raise ClusterError(f"ClusterRoleBinding for the kubelet client: HTTP {err.code}")

    def ready_condition(self) -> dict | None:
        node = self.node_object()
        for cond in (node or {}).get("status", {}).get("conditions") or []:
            if cond["type"] == "Ready":
                return cond
        return None

    def wait_ready(self, timeout: float, t0: float | None = None, log=log_default) -> None:
        t0 = t0 or time.monotonic()
        deadline = time.monotonic() + timeout
        detail = "not registered"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(f"kubelet exited with {self.proc.returncode}; first fatal line: "
                                   f"{first_fatal(self.log)}\nlast lines of {self.log}:\n{tail(self.log)}")
            cond = self.ready_condition()
            if cond and cond["status"] == "True":
                log(f"node {self.name} Ready ({time.monotonic() - t0:.1f} s)")
                return
            if cond:
                detail = f"{cond.get('reason')}: {cond.get('message')}"
            time.sleep(1)
        raise ClusterError(f"node {self.name} not Ready after {timeout:.0f} s ({detail}); last "
                           f"lines of {self.log}:\n{tail(self.log)}")

    def mounts(self) -> list[str]:
        return mounts_under(self.root_dir)

    def stop(self, log=log_default, containerd: bool = True) -> None:
        state = self.load()
        pid = self.pid()
        if pid:
            stop_process_group(pid, timeout=20)
            log(f"stopped kubelet (pid {pid})")
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for target in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        links = Path("/var/log/containers")
        if links.is_dir():  # the kubelet's links to our pod logs (a fixed folder)
            for link in links.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                    link.unlink()
        if containerd:
            self.containerd.stop(log=log)
        if state.get("tunables"):
            restore_kernel_tunables(state["tunables"])
        state.pop("pid", None)
        state.pop("tunables", None)
        if self.dir.exists():
            self.save(state)


# --- Prometheus with Kubernetes service discovery ----------------------------------------------------
# Debian's prometheus (2.42.0+ds) is built without the Kubernetes discovery: its config parser
# refuses `kubernetes_sd_configs` ("field kubernetes_sd_configs not found in type
# config.ScrapeConfig"). Upstream's, built here from its Go module (through the Go module proxy)
# with only that discovery mechanism (build tags remove_all_sd,enable_kubernetes_sd).
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_VERSION = "v0.316.0"  # the Go module's version of Prometheus 3.x
PROMETHEUS_TAGS = "remove_all_sd,enable_kubernetes_sd"


def prometheus_binary() -> Path:
    return build.cache_root().parent / f"prometheus-{PROMETHEUS_VERSION}" / "prometheus"


def build_prometheus(log=log_default) -> Path:
    """`go install` of upstream's cmd/prometheus into the cache (once: minutes)."""
    exe = prometheus_binary()
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    env = dict(os.environ, GOBIN=str(exe.parent), CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    env.setdefault("GOTOOLCHAIN", "local")
    proc = subprocess.run([build.find_go(), "install", "-trimpath", "-ldflags=-s -w",
                           f"-tags={PROMETHEUS_TAGS}",
                           f"{PROMETHEUS_MODULE}/cmd/prometheus@{PROMETHEUS_VERSION}"],
                          cwd=exe.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not exe.exists():
        raise ClusterError(f"go install prometheus failed ({proc.returncode}): {proc.stderr[-1500:]}")
    log(f"built Prometheus ({PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}) in {time.monotonic() - t0:.0f} s: {exe}")
    return exe


def pod_scrape_config(plane: ControlPlane, namespaces: list[str], interval: str = "2s") -> dict:
    """Prometheus configuration: pods discovered through this API server (as the admin), kept
    when annotated prometheus.io/scrape=true, scraped at <pod IP>:<prometheus.io/port><prometheus.io/path>."""
    pki = plane.pki
    meta = "__meta_kubernetes_pod_"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": [{
                "role": "pod", "api_server": plane.server,
                "tls_config": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "admin.crt"),
                               "key_file": str(pki / "admin.key")},
                "namespaces": {"names": namespaces}}],
            "relabel_configs": [
                {"source_labels": [f"{meta}annotation_prometheus_io_scrape"], "action": "keep", "regex": "true"},
                {"source_labels": [f"{meta}annotation_prometheus_io_path"], "regex": "(.+)",
                 "target_label": "__metrics_path__"},
                {"source_labels": [f"{meta}ip", f"{meta}annotation_prometheus_io_port"],
                 "regex": "(.+);(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": [f"{meta}name"], "target_label": "pod"},
                {"source_labels": [f"{meta}label_serving_kserve_io_inferenceservice"],
                 "target_label": "inferenceservice"},
            ]}],
    }


# --- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """python -m scripts.cluster.node start|stop|status|import IMAGE...|prometheus-build [--state-dir build/cluster]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.cluster.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "status", "import", "prometheus-build"))
    parser.add_argument("images", nargs="*", help="podman images to import into containerd")
    parser.add_argument("--state-dir", default="build/cluster",
                        help="the control plane's state folder (of `make cluster`)")
    parser.add_argument("--keep-containerd", action="store_true",
                        help="stop: leave containerd running")
    args = parser.parse_args(argv)
    plane = ControlPlane(args.state_dir)
    node = Node(plane)
    try:
        if args.action == "start":
            if not plane.running():
                raise ClusterError(f"no control plane runs from {plane.dir}: `make cluster` first")
            state = node.start()
            log_default(f"node {node.name} Ready; kubelet pid {state['pid']}, log {node.log}")
        elif args.action == "stop":
            node.stop(containerd=not args.keep_containerd)
        elif args.action == "prometheus-build":
            log_default(f"ready: {build_prometheus()}")
        elif args.action == "import":
            node.containerd.start()
            for ref in args.images:
                node.containerd.import_podman_image(ref)
        else:
            cond = node.ready_condition() if plane.running() else None
            print(json.dumps({"kubelet_pid": node.pid(), "containerd_pid": node.containerd.pid(),
                              "ready": cond}, indent=2))
    except ClusterError as err:
        print(f"node: error: {err}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

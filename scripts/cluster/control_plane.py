"""Start, check and stop a local control plane: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler from the cached multi-call binary, all on 127.0.0.1.

Everything lives in one state folder (build/cluster/ for `make cluster`, a temporary one in
tests): pki/ (certificates, made on first start), etcd/ (data), logs/<component>.log,
kubeconfig (admin, in system:masters) plus one kubeconfig per component, and state.json (ports,
PIDs, binary). The processes run in their own sessions, so they outlive the command that started
them; `stop` ends them by PID, after checking that each PID still runs our command line.

etcd listens on plain HTTP on loopback only (as envtest's does); the API server and the two
controllers serve TLS signed by the cluster CA and authenticate clients by certificate.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.cluster import build, certs
from scripts.serve.process import free_ports, process_names, stop_process_group

# Fixed ports of `make cluster` (the usual ones); tests take free ports instead.
DEFAULT_PORTS = {"etcd": 2379, "etcd-peer": 2380, "kube-apiserver": 6443,
                 "kube-controller-manager": 10257, "kube-scheduler": 10259}
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ClusterError(RuntimeError):
    pass


@dataclass
class State:
    ports: dict[str, int]
    bin_dir: str
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    start_seconds: float = 0.0


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def pick_free_ports() -> dict[str, int]:
    return dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS))))


class ControlPlane:
    def __init__(self, state_dir: Path | str, ports: dict[str, int] | None = None):
        self.dir = Path(state_dir).resolve()
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self._children: dict[str, subprocess.Popen] = {}  # what this object started
        if ports is None:  # the ports of the last start, else the fixed ones
            state = self.load()
            ports = state.ports if state else DEFAULT_PORTS
        self.ports = dict(ports)

    # --- state --------------------------------------------------------------------------------
    def load(self) -> State | None:
        try:
            return State(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, state: State) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    def owns(self, pid: int) -> bool:
        """Is `pid` alive and one of ours (its command line names this state folder)?"""
        return process_names(pid, str(self.dir))

    def running(self) -> dict[str, int]:
        state = self.load()
        if state is None:
            return {}
        return {name: pid for name, pid in state.pids.items() if self.owns(pid)}

    # --- files --------------------------------------------------------------------------------
    def write_kubeconfig(self, path: Path, user: str, cert_stem: str, embed: bool) -> None:
        def entry(key: str, file: Path) -> dict:
            if embed:
                import base64
                return {f"{key}-data": base64.b64encode(file.read_bytes()).decode()}
            return {key: str(file)}

        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, **entry("certificate-authority", self.pki / "ca.crt")}}],
            "users": [{"name": user, "user": {
                **entry("client-certificate", self.pki / f"{cert_stem}.crt"),
                **entry("client-key", self.pki / f"{cert_stem}.key")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not (self.pki / "sa.pub").exists():
            shutil.rmtree(self.pki, ignore_errors=True)
            certs.make_all(self.pki)
        # Written each start: the ports may differ from the last one.
        self.write_kubeconfig(self.kubeconfig, "kubernetes-admin", "admin", embed=True)
        self.write_kubeconfig(self.dir / "controller-manager.kubeconfig",
                              "system:kube-controller-manager", "controller-manager", embed=False)
        self.write_kubeconfig(self.dir / "scheduler.kubeconfig", "system:kube-scheduler",
                              "scheduler", embed=False)

    # --- commands -----------------------------------------------------------------------------
    def command(self, name: str, bin_dir: Path) -> list[str]:
        p, pki, d = self.ports, self.pki, self.dir
        exe = str(bin_dir / name)
        if name == "etcd":
            client = f"http://127.0.0.1:{p['etcd']}"
            peer = f"http://127.0.0.1:{p['etcd-peer']}"
            return [exe, "--name=local", f"--data-dir={d / 'etcd'}",
                    f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=local={peer}",
                    # A throw-away local cluster: no fsync (much faster on a shared disk).
                    "--unsafe-no-fsync=true", "--log-level=warn"]
        common_tls = [f"--tls-cert-file={pki / 'components-serving.crt'}",
                      f"--tls-private-key-file={pki / 'components-serving.key'}"]
        if name == "kube-apiserver":
            return [exe, "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={p['kube-apiserver']}",
                    f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                    f"--cert-dir={pki}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--allow-privileged=true",
                    f"--service-cluster-ip-range={certs.SERVICE_CIDR}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                    f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                    f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                    # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints
                    # validation refuses (loopback): keep the Service, skip its endpoints.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false"]
        if name == "kube-controller-manager":
            kubeconfig = d / "controller-manager.kubeconfig"
            return [exe, f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1", f"--secure-port={p['kube-controller-manager']}",
                    *common_tls, f"--client-ca-file={pki / 'ca.crt'}",
                    f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    f"--service-cluster-ip-range={certs.SERVICE_CIDR}",
                    "--use-service-account-credentials=true", "--leader-elect=false",
                    "--profiling=false"]
        if name == "kube-scheduler":
            kubeconfig = d / "scheduler.kubeconfig"
            return [exe, f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1", f"--secure-port={p['kube-scheduler']}",
                    *common_tls, f"--client-ca-file={pki / 'ca.crt'}",
                    "--leader-elect=false", "--profiling=false"]
        raise ValueError(name)

    # --- health -------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def health_url(self, name: str) -> str:
        port = self.ports[name]
        if name == "etcd":
            return f"http://127.0.0.1:{port}/health"
        path = "/readyz" if name == "kube-apiserver" else "/healthz"
        return f"https://127.0.0.1:{port}{path}"

    def healthy(self, name: str) -> tuple[bool, str]:
        url = self.health_url(name)
        try:
            ctx = None if url.startswith("http:") else self._tls()
            with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
                body = resp.read().decode(errors="replace").strip()
        except urllib.error.HTTPError as err:
            return False, f"HTTP {err.code}: {err.read().decode(errors='replace').strip()[-300:]}"
        except (OSError, ssl.SSLError) as err:
            return False, str(getattr(err, "reason", err))
        if name == "etcd":
            return '"health":"true"' in body, body
        return body == "ok", body

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- lifecycle ----------------------------------------------------------------------------
    def _spawn(self, name: str, bin_dir: Path) -> int:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.command(name, bin_dir), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)
        self._children[name] = proc
        return proc.pid

    def _wait(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            proc = self._children[name]
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode} before it was ready; "
                                   f"last lines of {self.logs / (name + '.log')}:\n{self.log_tail(name)}")
            ok, detail = self.healthy(name)
            if ok:
                return
            time.sleep(0.3)
        raise ClusterError(f"{name} not ready after {timeout:.0f} s ({self.health_url(name)}: "
                           f"{detail}); last lines of {self.logs / (name + '.log')}:\n"
                           f"{self.log_tail(name)}")

    def start(self, timeout: float = 180, log=print) -> State:
        """Start the four processes (building the binary first if the cache lacks it) and wait
        until each is healthy. Already running: returns its state unchanged."""
        running = self.running()
        if running:
            state = self.load()
            if set(running) == set(ORDER):
                self.ports = state.ports
                return state
            raise ClusterError(f"part of a control plane from {self.dir} still runs "
                               f"({', '.join(running)}): stop it first")
        taken = [f"{name} port {port}" for name, port in self.ports.items() if port_taken(port)]
        if taken:
            raise ClusterError(f"127.0.0.1 ports already in use: {', '.join(taken)} (another "
                               "cluster or program; `make cluster-stop`, or pick other ports)")
        bin_dir = build.build()
        self.prepare()
        state = State(ports=self.ports, bin_dir=str(bin_dir), started_at=time.time())
        self._children = {}
        begin = time.monotonic()
        try:
            # etcd, then the API server, then the two controllers side by side.
            for group in (["etcd"], ["kube-apiserver"], ["kube-controller-manager", "kube-scheduler"]):
                t0 = time.monotonic()
                for name in group:
                    state.pids[name] = self._spawn(name, bin_dir)
                self.save(state)
                for name in group:
                    self._wait(name, timeout)
                    log(f"cluster: {name} ready ({time.monotonic() - t0:.1f} s)")
        except BaseException:
            self.stop(log=lambda *_: None)
            raise
        state.start_seconds = round(time.monotonic() - begin, 2)
        self.save(state)
        return state

    def stop(self, log=print) -> list[str]:
        """Stop what state.json names, newest first; returns the names it stopped."""
        state = self.load()
        stopped = []
        if state is None:
            return stopped
        for name in reversed(ORDER):
            pid = state.pids.get(name)
            if pid and self.owns(pid):
                stop_process_group(pid, timeout=20)
                stopped.append(name)
                log(f"cluster: stopped {name} (pid {pid})")
        for proc in self._children.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        state.pids = {}
        self.save(state)
        return stopped

    def memory(self) -> dict[str, int]:
        """Resident memory (bytes) of each running component."""
        out = {}
        for name, pid in self.running().items():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) * 1024
        return out

    def env(self) -> dict[str, str]:
        """The environment for kubectl/helm against this cluster."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

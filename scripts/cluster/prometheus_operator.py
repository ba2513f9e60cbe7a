"""The Prometheus operator, built from its Go module at the release of
../shared/crds/prometheus-operator and run against a running control plane (scripts/cluster/control_plane.py), so the chart's PodMonitor and PrometheusRule are
turned into Prometheus scrape and rule configuration by the real operator, not only accepted by
its CRDs.

Build: the module's go.mod replaces two modules nested in its repository (pkg/apis/monitoring,
pkg/client) with ./ folders, which its module zip leaves out (each is a module of its own), and
`go install pkg@version` refuses replace lines anyway. So `./cmd/operator` is built in place in
Go's read-only module cache with the module's own go.mod as the main module, read through
`-modfile` from a copy whose two replace lines point at those modules' own sources of the same
version (nothing is written into the module cache). The binary goes into
<cache>/prometheus-operator-<version>-<hash of this recipe>/, like KServe's.

Run: a host process as the cluster admin through --apiserver/--ca-file/--cert-file/--key-file
(v0.93.0 has no --kubeconfig flag; it would read $KUBECONFIG, but the flags put the control
plane's folder in its command line, which is how its PID is recognised when stopping it), its
web server (/healthz, /metrics) on a free 127.0.0.1 port without TLS, `--namespaces` limited to
the namespaces asked for, and the StatusForConfigurationResources feature gate on, so each
PodMonitor and PrometheusRule gets an `Accepted` condition per Prometheus that selects it. It
needs no kubelet: it writes Secrets, ConfigMaps, a Service and a StatefulSet (whose pods never
run here). ../shared/crds lacks the Prometheus and Probe CRDs its Prometheus controller watches:
`install_crds` applies them from the module's example/prometheus-operator-crd (same release).
Its log is JSON lines (tests read the fields), in <plane.dir>/logs/prometheus-operator.log.

Check: Debian's promtool cannot read the configuration the operator writes, so `promtool_binary`
builds promtool of the Prometheus release the operator links, the same way (`build` builds both).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripts.cluster import build
from scripts.cluster.build import GoBinary
from scripts.cluster.control_plane import ControlPlane
from scripts.serve.process import free_ports, process_names, read_pid, stop_process_group

MODULE = "github.com/prometheus-operator/prometheus-operator"
VERSION = "v0.93.0"  # the release of ../shared/crds/prometheus-operator
BINARY = "prometheus-operator"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
# The CRDs the Prometheus controller watches that ../shared/crds does not have.
EXTRA_CRDS = ("monitoring.coreos.com_prometheuses.yaml", "monitoring.coreos.com_probes.yaml")


class OperatorError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"prometheus-operator: {message}", flush=True)


def version_ldflags(version: str) -> str:
    """The version stamp these projects' Makefiles set (prometheus/common/version): the operator
    names its config-reloader image after it."""
    return f"-s -w -X github.com/prometheus/common/version.Version={version.lstrip('v')}"


OPERATOR = GoBinary(BINARY, MODULE, VERSION, "./cmd/operator",
                    ("-trimpath", "-ldflags", version_ldflags(VERSION)),
                    nested=("pkg/apis/monitoring", "pkg/client"))


def source() -> Path:
    return build.module_source(MODULE, VERSION)


def promtool_binary() -> GoBinary:
    """Debian's promtool (2.42) cannot check what the operator generates: it lacks Kubernetes
    discovery ("field kubernetes_sd_configs not found") and Prometheus 3's fields ("field
    retention not found"). This is promtool of the Prometheus library the operator itself links
    (its go.mod's github.com/prometheus/prometheus: v0.313.1 = Prometheus 3.13.1, also the
    operator's default Prometheus version), with only Kubernetes discovery (build tags as
    scripts/cluster/node.py's Prometheus). Its go.mod has replace lines: no `go install @version`."""
    version = build.pinned_version(PROMETHEUS_MODULE, source() / "go.mod")
    release = (build.module_source(PROMETHEUS_MODULE, version) / "VERSION").read_text().strip()
    return GoBinary("promtool", PROMETHEUS_MODULE, version, "./cmd/promtool",
                    ("-trimpath", "-tags=remove_all_sd,enable_kubernetes_sd", "-ldflags",
                     version_ldflags(release)))


class PrometheusOperator:
    """The operator for `plane`, watching `namespaces`. PID file and log in <plane.dir>/logs."""

    def __init__(self, plane: ControlPlane, namespaces: list[str]):
        self.plane = plane
        self.namespaces = namespaces
        self.port = free_ports(1)[0]
        self.log_file = plane.logs / f"{BINARY}.log"
        self.pid_file = plane.logs / f"{BINARY}.pid"
        self.start_seconds = 0.0

    def kubectl(self, *args: str) -> str:
        proc = subprocess.run([str(build.KUBECTL), f"--kubeconfig={self.plane.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise OperatorError(f"kubectl {' '.join(args[:3])}: {proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def install_crds(self) -> None:
        folder = source() / "example" / "prometheus-operator-crd"
        self.kubectl("apply", "--server-side", "--field-manager=prometheus-operator-install",
                     *(f"-f={folder / name}" for name in EXTRA_CRDS))
        # polled: `kubectl wait` errors out on a CRD whose status has no conditions yet
        names = [f"crd/{name.split('_')[1].removesuffix('.yaml')}.monitoring.coreos.com"
                 for name in EXTRA_CRDS]
        deadline = time.monotonic() + 60
        while True:
            items = json.loads(self.kubectl("get", *names, "-o", "json"))["items"]
            if all(any(c["type"] == "Established" and c["status"] == "True"
                       for c in crd.get("status", {}).get("conditions") or []) for crd in items):
                return
            if time.monotonic() > deadline:
                raise OperatorError(f"{names} not Established after 60 s")
            time.sleep(0.3)

    def command(self, exe: Path) -> list[str]:
        pki = self.plane.pki
        return [str(exe), f"--apiserver={self.plane.server}", f"--ca-file={pki / 'ca.crt'}",
                f"--cert-file={pki / 'admin.crt'}", f"--key-file={pki / 'admin.key'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--namespaces={','.join(self.namespaces)}",
                "--feature-gates=StatusForConfigurationResources=true", "--log-format=json"]

    def running(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid and process_names(pid, str(self.plane.pki), BINARY) else None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 60) -> None:
        if not self.plane.running():
            raise OperatorError(f"no control plane runs from {self.plane.dir}: start it first")
        exe = OPERATOR.build()
        self.install_crds()
        self.plane.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_file, "ab") as out:
            child = subprocess.Popen(self.command(exe), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(f"{child.pid}\n")
        # /healthz answers once every controller has been set up (the web server starts last)
        while not self.healthy():
            if child.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                raise OperatorError(f"{BINARY} not ready (exit {child.returncode}); "
                                    f"{self.log_file}:\n{self.log_tail()}")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> bool:
        pid = self.running()
        if pid:
            stop_process_group(pid, timeout=20)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    def memory(self) -> int:
        pid = self.running()
        status = Path(f"/proc/{pid}/status").read_text() if pid else ""
        return next((int(line.split()[1]) * 1024 for line in status.splitlines()
                     if line.startswith("VmRSS:")), 0)


def main(argv: list[str] | None = None) -> int:
    """python -m scripts.cluster.prometheus_operator build [--force] [--print-dir]: the operator,
    then promtool (one go build at a time)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.cluster.prometheus_operator",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("build",))
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    parser.add_argument("--print-dir", action="store_true", help="print the cache folders and exit")
    args = parser.parse_args(argv)
    try:
        for binary in (OPERATOR, promtool_binary()):
            if args.print_dir:
                print(binary.path().parent)
                continue
            t0 = time.monotonic()
            path = binary.build(force=args.force)
            log(f"ready: {path} ({binary.module}@{binary.version}; {time.monotonic() - t0:.1f} s)")
    except build.BuildError as err:
        print(f"prometheus-operator: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

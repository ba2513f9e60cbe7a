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

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scripts.cluster import build
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


@dataclass(frozen=True)
class GoBinary:
    """A command of a Go module built in place in Go's read-only module cache, with the module's
    go.mod as the main module; `nested`: modules of the same repository and version that its
    go.mod replaces with ./ folders the module zip leaves out. The recipe's hash names the cache
    folder <cache>/<name>-<version>-<hash>/, so any change builds a new binary beside the old."""
    name: str
    module: str
    version: str
    package: str
    flags: tuple[str, ...]
    nested: tuple[str, ...] = ()

    def recipe_hash(self) -> str:
        recipe = json.dumps({"module": self.module, "version": self.version, "package": self.package,
                             "nested": self.nested, "flags": self.flags, "env": build.GO_ENV}, sort_keys=True)
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]

    def path(self) -> Path:
        return build.cache_root() / f"{self.name}-{self.version}-{self.recipe_hash()}" / self.name

    def build(self, force: bool = False) -> Path:
        """Build unless the cache has it (a lock keeps two builds apart); returns its path."""
        exe = self.path()
        if exe.exists() and not force:
            return exe
        go = build.find_go()
        exe.parent.parent.mkdir(parents=True, exist_ok=True)
        with open(exe.parent.parent / f".{self.name}-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if exe.exists() and not force:
                return exe
            src = build.module_source(self.module, self.version)
            log(f"building {self.module}@{self.version} {self.package} into {exe.parent} "
                "(minutes on 2 cores, once)")
            start = time.monotonic()
            tmp = exe.parent.with_name(exe.parent.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # GOWORK=off: Prometheus' zip has a go.work naming folders the zip leaves out
            env = dict(os.environ, **build.GO_ENV, GOWORK="off")
            env.setdefault("GOTOOLCHAIN", "local")
            modfile = []
            if self.nested:  # a copy of go.mod (its go.sum beside it) read through -modfile
                shutil.copyfile(src / "go.mod", tmp / "go.mod")
                shutil.copyfile(src / "go.sum", tmp / "go.sum")
                subprocess.run([go, "mod", "edit", *(
                    f"-replace={self.module}/{n}={build.module_source(f'{self.module}/{n}', self.version)}"
                    for n in self.nested), str(tmp / "go.mod")], check=True, env=env)
                modfile = [f"-modfile={tmp / 'go.mod'}"]
            proc = subprocess.run([go, "build", *self.flags, *modfile, "-o", str(tmp / self.name),
                                   self.package], cwd=src, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise build.BuildError(f"go build {self.package} of {self.module}@{self.version} "
                                       f"failed (exit {proc.returncode}) after "
                                       f"{time.monotonic() - start:.0f} s:\n"
                                       + "\n".join(proc.stdout.splitlines()[-40:]))
            for name in ("go.mod", "go.sum"):
                (tmp / name).unlink(missing_ok=True)
            (tmp / "VERSION").write_text(f"{self.module} {self.version}\nrecipe {self.recipe_hash()}\n")
            shutil.rmtree(exe.parent, ignore_errors=True)
            tmp.rename(exe.parent)
            log(f"built in {time.monotonic() - start:.0f} s: {exe} "
                f"({exe.stat().st_size / 2**20:.0f} MiB)")
        return exe


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

"""Build the control plane's multi-call binary (scripts/cluster/go) into a versioned cache, and
(GoBinary) any other upstream Go program, from its module, into the same cache.

The cache folder is named after the pinned Kubernetes release and a hash of go.mod, go.sum and
main.go, so a second `make cluster` finds the binary and starts in seconds, and any change of
the sources builds a new one beside the old. The folder holds `cluster` and one symlink per
component (`kube-apiserver`, `etcd`, ...) so each process shows under its own name.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"
SOURCES = ("go.mod", "go.sum", "main.go")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
BINARY = "cluster"
# KServe's release, the same as ../shared/crds; its module is the source of its other CRDs.
KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_VERSION = "v0.20.0"
# Where Go is when it is not on PATH (the machine image puts it there).
GO_FALLBACKS = ("/usr/local/go/bin/go",)
# The environment of every `go build` of an upstream program here: static, the module's own go.sum.
GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
# The kubectl scripts/setup.sh installs (the cluster's clients use it with their own kubeconfig).
KUBECTL = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"


class BuildError(RuntimeError):
    pass


def pinned_version(module: str, go_mod: Path = GO_DIR / "go.mod") -> str:
    """The version go.mod requires of `module` (e.g. k8s.io/kubernetes -> v1.34.4)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise BuildError(f"{go_mod} does not require {module}")
    return match.group(1)


def kubernetes_version() -> str:
    return pinned_version("k8s.io/kubernetes")


def etcd_version() -> str:
    return pinned_version("go.etcd.io/etcd/server/v3")


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (GO_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cache_root() -> Path:
    """$CLUSTER_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/image-classifier/cluster."""
    if os.environ.get("CLUSTER_CACHE_DIR"):
        return Path(os.environ["CLUSTER_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "image-classifier" / "cluster"


def bin_dir() -> Path:
    return cache_root() / f"{kubernetes_version()}-{source_hash()}"


def binary(component: str | None = None) -> Path:
    """Path of the multi-call binary, or of one component's symlink to it."""
    return bin_dir() / (component or BINARY)


def is_built() -> bool:
    return all(binary(c).exists() for c in (BINARY, *COMPONENTS))


def find_go() -> str:
    go = shutil.which("go") or next((p for p in GO_FALLBACKS if os.access(p, os.X_OK)), None)
    if go is None:
        raise BuildError("Go is not installed (no `go` on PATH nor at /usr/local/go/bin/go): it is "
                         "needed once to build the control plane from the Kubernetes modules")
    return go


def module_source(module: str, version: str) -> Path:
    """The source folder of a Go module at `version`, downloaded into Go's module cache
    (read-only) through the Go module proxy if it is not there yet."""
    import json

    env = dict(os.environ, GOFLAGS="-mod=mod")
    proc = subprocess.run([find_go(), "mod", "download", "-json", f"{module}@{version}"],
                          capture_output=True, text=True, env=env, cwd=GO_DIR.parent)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {}
    if proc.returncode != 0 or not info.get("Dir"):
        raise BuildError(f"go mod download {module}@{version} failed: "
                         f"{info.get('Error') or proc.stderr.strip()[-500:]}")
    return Path(info["Dir"])


def build_date() -> datetime:
    """Now, or SOURCE_DATE_EPOCH for a byte-identical rebuild (as Kubernetes' own scripts)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)


def ldflags(version: str) -> str:
    """Version stamps, as Kubernetes' hack/lib/version.sh sets them: without them every
    component reports v0.0.0-master."""
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date().strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = ["-s", "-w"]  # no symbol table nor DWARF: a smaller binary, a quicker link
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X={package}.{key}={value}" for key, value in stamps.items()]
    return " ".join(flags)


def log(message: str) -> None:
    print(f"cluster-build: {message}", flush=True)


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
                             "nested": self.nested, "flags": self.flags, "env": GO_ENV}, sort_keys=True)
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]

    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}-{self.recipe_hash()}" / self.name

    def build(self, force: bool = False) -> Path:
        """Build unless the cache has it (a lock keeps two builds apart); returns its path."""
        exe = self.path()
        if exe.exists() and not force:
            return exe
        go = find_go()
        exe.parent.parent.mkdir(parents=True, exist_ok=True)
        with open(exe.parent.parent / f".{self.name}-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if exe.exists() and not force:
                return exe
            src = module_source(self.module, self.version)
            log(f"building {self.module}@{self.version} {self.package} into {exe.parent} "
                "(minutes on 2 cores, once)")
            start = time.monotonic()
            tmp = exe.parent.with_name(exe.parent.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # GOWORK=off: Prometheus' zip has a go.work naming folders the zip leaves out
            env = dict(os.environ, **GO_ENV, GOWORK="off")
            env.setdefault("GOTOOLCHAIN", "local")
            modfile = []
            if self.nested:  # a copy of go.mod (its go.sum beside it) read through -modfile
                shutil.copyfile(src / "go.mod", tmp / "go.mod")
                shutil.copyfile(src / "go.sum", tmp / "go.sum")
                subprocess.run([go, "mod", "edit", *(
                    f"-replace={self.module}/{n}={module_source(f'{self.module}/{n}', self.version)}"
                    for n in self.nested), str(tmp / "go.mod")], check=True, env=env)
                modfile = [f"-modfile={tmp / 'go.mod'}"]
            proc = subprocess.run([go, "build", *self.flags, *modfile, "-o", str(tmp / self.name),
                                   self.package], cwd=src, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise BuildError(f"go build {self.package} of {self.module}@{self.version} "
                                 f"failed (exit {proc.returncode}) after {time.monotonic() - start:.0f} s:\n"
                                 + "\n".join(proc.stdout.splitlines()[-40:]))
            for name in ("go.mod", "go.sum"):
                (tmp / name).unlink(missing_ok=True)
            (tmp / "VERSION").write_text(f"{self.module} {self.version}\nrecipe {self.recipe_hash()}\n")
            shutil.rmtree(exe.parent, ignore_errors=True)
            tmp.rename(exe.parent)
            log(f"built in {time.monotonic() - start:.0f} s: {exe} "
                f"({exe.stat().st_size / 2**20:.0f} MiB)")
        return exe


def build(force: bool = False) -> Path:
    """Build the binary unless the cache has it; returns the folder that holds it. A lock keeps
    two builds (e.g. `make cluster` and a test run) from racing on the same folder."""
    target = bin_dir()
    if is_built() and not force:
        return target
    go = find_go()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built() and not force:
            return target
        version = kubernetes_version()
        log(f"building Kubernetes {version} (kube-apiserver, kube-controller-manager, kubelet, "
            f"kube-scheduler) and etcd {etcd_version()} from their Go modules into {target}; "
            "the first build takes many minutes on 2 cores (later starts reuse it)")
        start = time.monotonic()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
        env.setdefault("GOTOOLCHAIN", "local")
        cmd = [go, "build", "-trimpath", "-ldflags", ldflags(version), "-o", str(tmp / BINARY), "."]
        proc = subprocess.run(cmd, cwd=GO_DIR, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join(proc.stdout.splitlines()[-40:])
            raise BuildError(f"go build failed (exit {proc.returncode}) after "
                             f"{time.monotonic() - start:.0f} s:\n{tail}")
        for component in COMPONENTS:
            (tmp / component).symlink_to(BINARY)
        (tmp / "VERSION").write_text(f"kubernetes {version}\netcd {etcd_version()}\n"
                                     f"sources {source_hash()}\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        log(f"built in {time.monotonic() - start:.0f} s: {target / BINARY}")
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.cluster build", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    parser.add_argument("--print-dir", action="store_true", help="print the cache folder and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(bin_dir())
        return 0
    try:
        target = build(force=args.force)
    except BuildError as err:
        print(f"cluster-build: error: {err}", file=sys.stderr)
        return 1
    log(f"ready: {target} (Kubernetes {kubernetes_version()}, etcd {etcd_version()})")
    return 0

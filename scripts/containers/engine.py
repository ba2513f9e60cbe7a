"""The container engine: podman (Debian's, rootful) or docker, whichever is present and answers.

Podman on these machines needs two settings (../shared/notes/platform-facts.md): the runc runtime
where cgroups are v1 or hybrid (crun refuses them), and default ulimits at or below the host's hard
limits (no CAP_SYS_RESOURCE: podman's defaults fail in setrlimit, even for a pod's infra container).
They go into a containers.conf of our own, handed to every podman call through CONTAINERS_CONF, so
nothing under /etc is changed."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "build" / "containers"


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Engine:
    name: str                                  # "podman" or "docker"
    env: dict[str, str] = field(default_factory=dict)
    build_flags: tuple[str, ...] = ()          # buildah reads no default_ulimits: they go here

    def argv(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float | None = None,
            capture: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), env={**os.environ, **self.env}, text=True,
                              capture_output=capture, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise EngineError(f"{self.name} {' '.join(args[:3])} ... failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout or '').strip()[-2000:]}")
        return proc

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0

    def image_size(self, image: str) -> int:
        return int(json.loads(self.run("image", "inspect", image).stdout)[0]["Size"])


def hard_limit(kind: int, ceiling: int = 1 << 20) -> int:
    hard = resource.getrlimit(kind)[1]
    return ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)


def ulimits() -> list[str]:
    # nproc at the host's hard limit still fails in runc's setrlimit here; 8192 processes is plenty
    nofile, nproc = hard_limit(resource.RLIMIT_NOFILE), hard_limit(resource.RLIMIT_NPROC, 8192)
    return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]


def podman_conf(cgroups_v2_only: bool) -> str:
    lines = ["[containers]", "default_ulimits = [" + ", ".join(f'"{u}"' for u in ulimits()) + "]"]
    if not cgroups_v2_only:
        lines += ["[engine]", 'runtime = "runc"']
    return "\n".join(lines) + "\n"


def cgroups_v2_only() -> bool:
    """True on a pure cgroup v2 host (one cgroup2 mount at /sys/fs/cgroup)."""
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in f)
    except OSError:
        return False


@cache
def detect(preferred: str | None = None) -> Engine:
    """The first engine of CONTAINER_ENGINE (or podman, then docker) that answers `info`."""
    names = [preferred or os.environ.get("CONTAINER_ENGINE") or "podman", "docker"]
    problems = []
    for name in dict.fromkeys(names):
        if shutil.which(name) is None:
            problems.append(f"{name}: not found")
            continue
        env, build_flags = {}, ()
        if name == "podman":
            build_flags = tuple(a for u in ulimits() for a in ("--ulimit", u))
            if "CONTAINERS_CONF" not in os.environ:
                CONF_DIR.mkdir(parents=True, exist_ok=True)
                conf = CONF_DIR / "containers.conf"
                conf.write_text(podman_conf(cgroups_v2_only()))
                env["CONTAINERS_CONF"] = str(conf)
        engine = Engine(name, env, build_flags)
        info = engine.run("info", check=False, timeout=60)
        if info.returncode == 0:
            return engine
        problems.append(f"{name}: `{name} info` fails: {(info.stderr or '').strip()[-300:]}")
    raise EngineError("no container engine answers (" + "; ".join(problems) + "). Install podman "
                      "(Debian: apt-get install podman runc) or start a Docker engine.")

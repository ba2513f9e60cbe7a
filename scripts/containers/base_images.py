"""Base images made here from Debian's packages, for machines that reach no image registry.

- debian-python: Debian bookworm (debootstrap, minbase) with Python 3.11, venv and CA certificates:
  a stand-in for the python:3.11-slim the Dockerfiles name by default (same Debian, same Python
  minor version); passed to them as the BASE_IMAGE build argument.
- busybox: Debian's static busybox on an empty image, the usual base of KServe modelcar images.

Each is built once and reused: its tag carries a hash of the recipe, so a changed recipe rebuilds."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from scripts.containers.engine import Engine, EngineError

SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


def _tag(*recipe: str) -> str:
    return hashlib.sha256("\n".join(recipe).encode()).hexdigest()[:10]


def debian_python_name() -> str:
    return f"localhost/image-classifier/debian-python:{SUITE}-{_tag(SUITE, MIRROR, *PYTHON_PACKAGES)}"


def busybox_name() -> str:
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "busybox-static"],
                             capture_output=True, text=True).stdout.strip().replace(":", "_").replace("+", "_")
    return f"localhost/image-classifier/busybox:{version or 'unknown'}"


def say(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def debian_python(engine: Engine) -> str:
    """debootstrap minbase + Python, imported as an image (about 1.5 min the first time)."""
    name = debian_python_name()
    if engine.image_exists(name):
        return name
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap not found (Debian: apt-get install debootstrap); it builds the "
                          "base image from Debian's packages where no registry is reachable")
    if os.geteuid() != 0:
        raise EngineError("debootstrap needs root to build the Debian base image")
    say(f"building base image {name} with debootstrap ({SUITE}, {MIRROR}; about 1.5 min)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debian-base-") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PYTHON_PACKAGES)}",
                               SUITE, str(root), MIRROR], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(f"debootstrap failed: {(proc.stdout + proc.stderr)[-1500:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(engine.argv("import", "--change", "CMD [\"python3\"]", "-", name),
                                  stdin=tar.stdout, env={**os.environ, **engine.env}, capture_output=True, text=True)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise EngineError(f"{engine.name} import failed: {imported.stderr[-1000:]}")
    say(f"base image {name} built in {time.monotonic() - started:.0f} s")
    return name


def busybox(engine: Engine) -> str:
    """FROM scratch + Debian's static busybox with its applet links (sh, sleep, ln, ...)."""
    name = busybox_name()
    if engine.image_exists(name):
        return name
    if not BUSYBOX.is_file():
        raise EngineError(f"{BUSYBOX} not found (Debian: apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="busybox-") as tmp:
        shutil.copy2(BUSYBOX, Path(tmp) / "busybox")
        (Path(tmp) / "Containerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "mkdir", "-p", "/usr/bin", "/sbin", "/usr/sbin", "/tmp"]\n'
            'RUN ["/bin/busybox", "--install", "-s"]\nCMD ["sh"]\n')
        engine.run("build", "-t", name, tmp, timeout=300)
    say(f"base image {name} built")
    return name

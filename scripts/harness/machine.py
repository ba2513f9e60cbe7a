"""What machine a recorded result came from (the benchmark and reliability results files)."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _proc_field(path: str, key: str) -> str | None:
    """The value of `key: value` in a /proc file, None where there is no such file or line."""
    p = Path(path)
    if not p.exists():
        return None
    return next((line.split(":", 1)[1].strip() for line in p.read_text().splitlines() if line.startswith(key)), None)


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor()


def memory_kib() -> int:
    total = _proc_field("/proc/meminfo", "MemTotal")  # "24684148 kB"
    return int(total.split()[0]) if total else 0


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def describe() -> dict:
    """One description of this machine and software for every results file (bench, reliability)."""
    import torch  # the torch build in use (a CUDA build may run on the CPU)

    return {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "memory_gib": round(memory_kib() / 2**20, 1), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torchserve": _version("torchserve"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "commit": _commit(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}

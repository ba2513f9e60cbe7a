"""What machine a recorded result came from (the benchmark and reliability results files)."""
from __future__ import annotations

import platform
from pathlib import Path


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

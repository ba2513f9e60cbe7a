"""Run a real TorchServe over a storage layout (config/config.properties + model-store/) and know
when it is ready: every model in the config's model_snapshot has a READY worker (TorchServe's
/ping says healthy before workers load). Used by `make serve`, the demo and the tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts.settings import ServingSettings


class TorchServeError(RuntimeError):
    pass


# Frontend log lines that mean a Python worker failed while loading its model.
WORKER_FAILURE_MARKERS = ("WorkerInitializationException", "-> WORKER_ERROR", "Backend worker process died")


def snapshot_models(config: Path) -> dict[str, list[str]]:
    """Model name → versions, from the model_snapshot line of a config.properties."""
    for line in config.read_text().splitlines():
        if line.startswith("model_snapshot="):
            models = json.loads(line.split("=", 1)[1])["models"]
            return {name: sorted(versions) for name, versions in models.items()}
    raise TorchServeError(f"{config} has no model_snapshot line")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TorchServe:
    def __init__(self, store: Path, settings: ServingSettings, run_dir: Path):
        self.store = Path(store).resolve()
        self.settings = settings
        self.run_dir = Path(run_dir).resolve()
        self.config = self.store / "config" / "config.properties"
        self.log_file = self.run_dir / "torchserve.out"
        self.pid_file = self.run_dir / "torchserve.pid"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "torchserve"
        return [str(exe), "--start", "--foreground", "--ncs", "--ts-config", str(self.config),
                "--model-store", str(self.store / "model-store")]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k != "PYTHONPATH" and not k.startswith("TS_")}  # workers import only the .mar
        env.update(self.settings.torchserve_env())
        tmp = self.run_dir / "tmp"  # TorchServe keeps one pid file per TMPDIR: isolate instances
        env.update(TMPDIR=str(tmp), LOG_LOCATION=str(self.run_dir / "logs"),
                   METRICS_LOCATION=str(self.run_dir / "logs"))
        return env

    def start(self, timeout: float = 180) -> "TorchServe":
        if not self.config.exists():
            raise TorchServeError(f"no {self.config}: run the archive step first (make archive)")
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env(), cwd=self.run_dir,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def worker_failure(self) -> str | None:
        """The worker's own output if a model failed to load (TorchServe would otherwise retry
        with back-off and we would only see a time-out)."""
        if not self.log_file.exists():
            return None
        lines = self.log_file.read_text(errors="replace").splitlines()
        if not any(marker in line for line in lines for marker in WORKER_FAILURE_MARKERS):
            return None
        messages = dict.fromkeys(line.split("MODEL_LOG - ", 1)[1] for line in lines if "MODEL_LOG - " in line)
        return "\n".join(list(messages)[-40:])  # retries repeat the same traceback: keep one

    def model_status(self, name: str) -> list[dict]:
        r = requests.get(f"{self.settings.management_url}/models/{name}/all", timeout=5)
        r.raise_for_status()
        return r.json()

    def ready(self) -> bool:
        try:
            for name, versions in snapshot_models(self.config).items():
                described = {d["modelVersion"]: d for d in self.model_status(name)}
                for v in versions:
                    workers = described.get(v, {}).get("workers", [])
                    if not workers or not all(w.get("status") == "READY" for w in workers):
                        return False
            return True
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TorchServeError(f"TorchServe exited with {self.proc.returncode} before it was "
                                      f"ready; last log lines:\n{self.log_tail()}")
            if self.ready():
                return
            failure = self.worker_failure()
            if failure is not None:
                raise TorchServeError(f"a model failed to load; worker output:\n{failure[-3000:]}")
            time.sleep(0.5)
        raise TorchServeError(f"TorchServe not ready after {timeout:.0f} s; last log lines:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        pid = self.proc.pid if self.proc else read_pid(self.pid_file)
        if pid is not None:
            stop_process_group(pid, timeout)
        if self.proc is not None:
            self.proc.wait(timeout=5)
        self.pid_file.unlink(missing_ok=True)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop_process_group(pid: int, timeout: float = 30) -> bool:
    """SIGTERM the process group led by `pid` (frontend + Python workers), SIGKILL if it lingers."""
    if not process_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap if it is our child, so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True

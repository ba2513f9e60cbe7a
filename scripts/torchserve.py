"""Run a real TorchServe over a storage layout (config/config.properties + model-store/) and know
when it is ready: every model in the config's model_snapshot has a READY worker (TorchServe's
/ping says healthy before workers load). Used by `make serve`, the demo and the tests."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import requests

from scripts.process import ServerError, ServerProcess, read_pid, stop_process_group
from scripts.settings import ServingSettings


class TorchServeError(ServerError):
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


class TorchServe(ServerProcess):
    name = "TorchServe"
    error = TorchServeError
    poll_seconds = 0.5

    def __init__(self, store: Path, settings: ServingSettings, run_dir: Path):
        super().__init__(run_dir, "torchserve.out")
        self.store = Path(store).resolve()
        self.settings = settings
        self.config = self.store / "config" / "config.properties"
        self.pid_file = self.run_dir / "torchserve.pid"

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
        return super().start(timeout)

    def started(self) -> None:
        self.pid_file.write_text(f"{self.proc.pid}\n")

    def failure(self) -> str | None:
        """The worker's own output if a model failed to load (TorchServe would otherwise retry
        with back-off and we would only see a time-out)."""
        if not self.log_file.exists():
            return None
        lines = self.log_file.read_text(errors="replace").splitlines()
        if not any(marker in line for line in lines for marker in WORKER_FAILURE_MARKERS):
            return None
        messages = dict.fromkeys(line.split("MODEL_LOG - ", 1)[1] for line in lines if "MODEL_LOG - " in line)
        # retries repeat the same traceback: keep one
        return "a model failed to load; worker output:\n" + "\n".join(list(messages)[-40:])

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

    def stop(self, timeout: float = 30) -> None:
        """Also stops an instance started by another process (`make serve`), through its pid file."""
        if self.proc is None and (pid := read_pid(self.pid_file)) is not None:
            stop_process_group(pid, timeout)
        super().stop(timeout)
        self.pid_file.unlink(missing_ok=True)

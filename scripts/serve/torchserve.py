"""Run a real TorchServe over a storage layout (config/config.properties + model-store/) and know
when it is ready: every model in the config's model_snapshot has a READY worker (TorchServe's
/ping says healthy before workers load). Used by `make serve`, the demo and the tests."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

from scripts.runtime.mar import read_manifest, read_spec
from scripts.serve.process import ServerError, ServerProcess, read_pid, stop_process_group
from handlers.exporter import snapshot
from handlers.settings import ServingSettings
from scripts.serve.settings import ModelServingSettings


REPO_ROOT = Path(__file__).resolve().parents[2]


class TorchServeError(ServerError):
    pass


# Frontend log lines that mean a Python worker failed while loading its model.
WORKER_FAILURE_MARKERS = ("WorkerInitializationException", "-> WORKER_ERROR", "Backend worker process died")
# Logged once each time the frontend restarts a worker that died (not on scale-down/unregister).
WORKER_RESTART_MARKER = "Retry worker:"


def snapshot_models(config: Path) -> dict[str, list[str]]:
    """Model name → versions, from the model_snapshot line of a config.properties."""
    try:
        return {name: sorted(versions) for name, versions in snapshot(config).items()}
    except ValueError as e:
        raise TorchServeError(str(e)) from e


class TorchServe(ServerProcess):
    name = "TorchServe"
    error = TorchServeError
    poll_seconds = 0.5

    def __init__(self, store: Path, settings: ServingSettings, run_dir: Path, extra_env: dict[str, str] | None = None,
                 exporter: bool = True, token_file: Path | None = None):
        super().__init__(run_dir, "torchserve.out")
        self.exporter = exporter  # False: TorchServe alone, as a stock image runs it (no fine buckets)
        # tokens: the exporter authenticates callers on the inference ports, TorchServe listens on loopback
        self.token_file = token_file
        if token_file is not None and not exporter:
            raise TorchServeError("authentication is the exporter's: it cannot run without it")
        self.extra_env = dict(extra_env or {})  # e.g. TS_* limits, as the chart sets them
        self.store = Path(store).resolve()
        self.settings = settings
        self.config = self.store / "config" / "config.properties"
        self.pid_file = self.run_dir / "torchserve.pid"

    def command(self) -> list[str]:
        """TorchServe under the metrics exporter, as the chart's ServingRuntime runs it."""
        exe = Path(sys.executable).parent / "torchserve"
        torchserve = [str(exe), "--start", "--foreground", "--ncs", "--ts-config", str(self.config),
                      "--model-store", str(self.store / "model-store")]
        if not self.exporter:
            return torchserve
        s = self.settings
        auth = ([] if self.token_file is None else
                ["--inference-listen", f"{s.host}:{s.inference_port}", "--grpc-listen", f"{s.host}:{s.grpc_inference_port}"])
        return [sys.executable, "-m", "handlers.exporter", "--listen", f"{s.host}:{s.metrics_port}",
                "--frontend-port", str(s.frontend_metrics_port), "--config", str(self.config),
                "--multiproc-dir", str(self.run_dir / "handler-metrics"), "--log-location", str(self.run_dir / "logs"),
                *auth, "--", *torchserve]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k != "PYTHONPATH" and not k.startswith("TS_")}  # workers import only the .mar
        env.update(self.settings.torchserve_env(authenticated=self.token_file is not None))
        env.pop("SERVE_TOKEN_FILE", None)
        if self.token_file is not None:
            env["SERVE_TOKEN_FILE"] = str(self.token_file)
        tmp = self.run_dir / "tmp"  # TorchServe keeps one pid file per TMPDIR: isolate instances
        env.update(TMPDIR=str(tmp), LOG_LOCATION=str(self.run_dir / "logs"),
                   METRICS_LOCATION=str(self.run_dir / "logs"),
                   PYTHONPATH=str(REPO_ROOT))  # the exporter's; it keeps it from TorchServe's workers
        return {**env, **self.extra_env}

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

    def worker_pids(self, name: str, version: str | None = None) -> list[int]:
        path = f"{name}/{version}" if version else name
        r = requests.get(f"{self.settings.management_url}/models/{path}", timeout=5)
        r.raise_for_status()
        return sorted(w["pid"] for d in r.json() for w in d["workers"] if w.get("pid"))

    def worker_restarts(self) -> int:
        """Workers the frontend restarted after they died, from its log (this process's run)."""
        if not self.log_file.exists():
            return 0
        with open(self.log_file, errors="replace") as f:
            return sum(WORKER_RESTART_MARKER in line for line in f)

    # --- model API (needs enable_model_api=true: FrontendSettings) -----------------------------
    def registration(self, mar_name: str, model_settings: ModelServingSettings) -> dict[str, str | int]:
        """The model API's parameters for a `.mar` of the store, as the snapshot sets them."""
        serving = model_settings.apply(read_spec(self.store / "model-store" / mar_name).serving)
        return {"url": mar_name, "initial_workers": serving.torchserve_worker_count, "batch_size": serving.batch_size,
                "max_batch_delay": serving.max_batch_delay_ms, "response_timeout": model_settings.response_timeout_s}

    def register(self, mar_name: str, model_settings: ModelServingSettings | None = None,
                 timeout: float = 180) -> None:
        """Register a `.mar` of the model store with its archive's workers and batching, as the
        snapshot has them (the API's defaults are batch size 1, delay 100 ms), and wait until READY.
        Asynchronous on purpose: a synchronous registration stalls some inference requests that
        arrive meanwhile for the whole worker start-up (measured: 14 s with 8 clients)."""
        params = self.registration(mar_name, model_settings or ModelServingSettings())
        r = requests.post(f"{self.settings.management_url}/models", timeout=30, params={**params, "synchronous": "false"})
        if r.status_code not in (200, 202):
            raise TorchServeError(f"registering {mar_name}: HTTP {r.status_code} {r.text.strip()}")
        manifest = read_manifest(self.store / "model-store" / mar_name)["model"]
        name, version = manifest["modelName"], manifest["modelVersion"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = requests.get(f"{self.settings.management_url}/models/{name}/{version}", timeout=5)
            if described.ok:
                running = described.json()[0]["workers"]
                if len(running) >= params["initial_workers"] and all(w["status"] == "READY" for w in running):
                    return
            failure = self.failure()
            if failure is not None:
                raise TorchServeError(failure)
            time.sleep(self.poll_seconds)
        raise TorchServeError(f"{name} {version} not READY {timeout:.0f} s after registration")

    def set_default(self, name: str, version: str) -> None:
        r = requests.put(f"{self.settings.management_url}/models/{name}/{version}/set-default", timeout=30)
        if not r.ok:
            raise TorchServeError(f"set-default {name} {version}: HTTP {r.status_code} {r.text.strip()}")

    def unregister(self, name: str, version: str, drain_timeout: float = 60, settle: float = 1.0) -> None:
        """Unregister a version that is no longer the default, after its queue has drained:
        TorchServe 0.12 drops the queued and in-flight jobs of an unregistered version without
        answering them (the clients hang until their own time-out). `settle` covers the batch
        already taken off the queue by the worker."""
        url = f"{self.settings.management_url}/models/{name}/{version}"
        deadline, empty = time.monotonic() + drain_timeout, 0
        while empty < 3:  # three empty polls in a row: nothing is routed to it any more
            if time.monotonic() > deadline:
                raise TorchServeError(f"{name} {version} still has queued requests after {drain_timeout:.0f} s")
            pending = requests.get(url, timeout=5).json()[0]["jobQueueStatus"]["pendingRequests"]
            empty = empty + 1 if pending == 0 else 0
            time.sleep(0.2)
        time.sleep(settle)
        r = requests.delete(url, timeout=60)
        if not r.ok:
            raise TorchServeError(f"unregister {name} {version}: HTTP {r.status_code} {r.text.strip()}")

    def stop(self, timeout: float = 30) -> None:
        """Also stops an instance started by another process (`make serve`), through its pid file."""
        if self.proc is None and (pid := read_pid(self.pid_file)) is not None:
            stop_process_group(pid, timeout)
        super().stop(timeout)
        self.pid_file.unlink(missing_ok=True)

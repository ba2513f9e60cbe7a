"""The two runtimes as the scenarios see them: where requests go, which processes serve, what a
process fault is and what brings the service back, and how a new model version replaces the old.
Scenarios talk to this interface only, so each runs unchanged on both.

- TorchServe: one frontend with worker processes. A fault kills one worker; the frontend starts a
  new one by itself. A rollout goes through its management API in the same server.
- KServe-native runtime: one process per pod. A fault kills that process; the suite then starts it
  again on the same ports, as the kubelet restarts a container. A rollout starts the new version as
  a second runtime beside the old, moves the endpoint to it once it is ready, then stops the old one
  with SIGTERM (its in-flight requests finish), as a Deployment's rolling update does. The endpoint
  object stands in for the Service (kube-proxy), which does not exist on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import requests

from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import ModelServingSettings
from scripts.serve.torchserve import TorchServe

TORCHSERVE, KSERVE_NATIVE = "torchserve", "kserve-native"
RUNTIMES = (TORCHSERVE, KSERVE_NATIVE)
LABELS = {TORCHSERVE: "TorchServe", KSERVE_NATIVE: "KServe-native"}


class ServerUnderTest:
    runtime: str
    protocols: tuple[str, ...]  # the request kinds the workload rotates through
    ping_path: str  # a cheap GET that opens a connection
    faulted: str  # what a fault kills: "worker" or "server"

    def __init__(self, model: str, versions: tuple[str, ...]):
        self.model, self.versions = model, versions
        self.version = versions[0]  # the one served now

    def next_version(self) -> str:
        """The version a rollout moves to: the other one."""
        return next(v for v in self.versions if v != self.version)

    @property
    def url(self) -> str:
        """The inference endpoint now (read per request: a rollout may move it)."""
        raise NotImplementedError

    def serving_pids(self) -> list[int]:
        raise NotImplementedError

    def restarts(self) -> int:
        """Serving processes started again after a death (TorchServe's log; the kubelet's count)."""
        raise NotImplementedError

    def kill(self) -> int:
        """SIGKILL one serving process; its pid."""
        pid = self.serving_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def recover(self) -> None:
        """What the platform does after a kill (nothing where the server heals itself)."""

    def roll_out(self, naive: bool = False) -> tuple[dict[str, float], float]:
        """Serve next_version() instead of the version served now, under the caller's load: the
        time of each step and the moment new requests stop going to the old version
        (time.perf_counter())."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class TorchServeUnderTest(ServerUnderTest):
    runtime, protocols, ping_path, faulted = TORCHSERVE, ("raw", "raw", "v1", "v2"), "/ping", "worker"

    def __init__(self, ts: TorchServe, model: str, mars: dict[str, str], model_settings: ModelServingSettings):
        super().__init__(model, tuple(mars))
        self.ts, self.mars, self.model_settings = ts, mars, model_settings

    @property
    def url(self) -> str:
        return self.ts.settings.inference_url

    def serving_pids(self) -> list[int]:
        return self.ts.worker_pids(self.model)

    def restarts(self) -> int:
        return self.ts.worker_restarts()

    def roll_out(self, naive: bool = False) -> tuple[dict[str, float], float]:
        """Register the new version, make it the default, unregister the old one. naive=True: a
        synchronous registration and an immediate unregister (what the docs suggest), measured to
        show why the suite's procedure (scripts/serve/torchserve.py) drains first."""
        old, new = self.version, self.next_version()
        mgmt, steps = self.ts.settings.management_url, {}
        t = time.perf_counter()
        if naive:
            requests.post(f"{mgmt}/models", timeout=300,
                          params={**self.ts.registration(self.mars[new], self.model_settings),
                                  "synchronous": "true"}).raise_for_status()
        else:
            self.ts.register(self.mars[new], self.model_settings)
        steps["register"] = round(time.perf_counter() - t, 2)
        time.sleep(1.0)
        t = time.perf_counter()
        self.ts.set_default(self.model, new)
        switched = time.perf_counter()
        steps["set_default"] = round(switched - t, 3)
        t = time.perf_counter()
        if naive:
            requests.delete(f"{mgmt}/models/{self.model}/{old}", timeout=60).raise_for_status()
        else:
            self.ts.unregister(self.model, old)
        steps["unregister"] = round(time.perf_counter() - t, 2)
        self.version = new
        return steps, switched

    def stop(self) -> None:
        self.ts.stop()


class KServeNativeUnderTest(ServerUnderTest):
    runtime, protocols, ping_path, faulted = KSERVE_NATIVE, ("v1", "v2"), "/v2/health/live", "server"
    start_timeout_s = 120.0

    def __init__(self, stores: dict[str, Path], run_dir: Path, model: str, env: dict[str, str]):
        super().__init__(model, tuple(stores))
        self.stores, self.run_dir, self.env = stores, Path(run_dir), dict(env)
        self.runtime_process = self._runtime(self.version)
        self._restarts = 0

    def _runtime(self, version: str) -> KServeRuntime:
        http, grpc_port = free_ports(2)
        return KServeRuntime(self.stores[version], self.run_dir / version, http, grpc_port, extra_env=self.env)

    def start(self) -> "KServeNativeUnderTest":
        self.runtime_process.start(timeout=self.start_timeout_s)
        return self

    @property
    def url(self) -> str:
        return self.runtime_process.url

    def serving_pids(self) -> list[int]:
        proc = self.runtime_process.proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def restarts(self) -> int:
        return self._restarts

    def recover(self) -> None:
        """Start the killed runtime again on its ports, as the kubelet restarts the container."""
        self.runtime_process.proc.wait()
        self.runtime_process.start(timeout=self.start_timeout_s)
        self._restarts += 1

    def roll_out(self, naive: bool = False) -> tuple[dict[str, float], float]:
        if naive:
            raise ValueError("the naive procedure is TorchServe's management API")
        steps, old = {}, self.runtime_process
        t = time.perf_counter()
        new = self._runtime(self.next_version()).start(timeout=self.start_timeout_s)
        steps["start_new"] = round(time.perf_counter() - t, 2)
        self.runtime_process = new  # the endpoint moves: new requests go to the new version
        switched = time.perf_counter()
        time.sleep(1.0)  # the endpoint change reaching every client (a preStop hook's sleep in a pod)
        t = time.perf_counter()
        old.stop()  # SIGTERM: what is in flight finishes
        steps["stop_old"] = round(time.perf_counter() - t, 2)
        self.version = self.next_version()
        return steps, switched

    def stop(self) -> None:
        self.runtime_process.stop()


def kserve_stores(model_store: Path, mars: dict[str, str], out: Path) -> dict[str, Path]:
    """One model store per version (the runtime serves every archive of its store)."""
    stores = {}
    for version, mar in mars.items():
        store = stores[version] = out / f"kserve-store-{version}"
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_store / mar, store / mar)
    return stores

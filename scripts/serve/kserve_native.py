"""Run the KServe-native runtime (`python -m scripts.runtime`) as a subprocess in its own
process group and know when it is ready: OIP `/v2/health/ready` over REST, `ServerReady` over
gRPC and its /metrics listener. Used by the benchmarks and the tests; stopped by PID."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from scripts.serve.process import ServerError, ServerProcess, free_ports

REPO = Path(__file__).resolve().parents[2]


class KServeRuntimeError(ServerError):
    pass


class KServeRuntime(ServerProcess):
    name = "KServe-native runtime"
    error = KServeRuntimeError

    def __init__(self, model_store: Path, run_dir: Path, http_port: int, grpc_port: int,
                 host: str = "127.0.0.1", extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                 metrics_port: int | None = None):
        super().__init__(run_dir, "kserve-runtime.out")
        self.tmp = self.run_dir / "tmp"  # where it unpacks the archives: its own
        self.model_store = Path(model_store)
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})  # e.g. SERVE_* request limits
        # None: a free port other than the two given
        self.metrics_port = metrics_port or next(p for p in free_ports(3) if p not in (http_port, grpc_port))
        self.url = f"http://{host}:{http_port}"
        self.grpc_target = f"{host}:{grpc_port}"
        self.metrics_url = f"http://{host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "scripts.runtime", "--model-store", str(self.model_store),
                "--host", self.host, "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port), *self.extra_args]

    def env(self) -> dict[str, str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TMPDIR": str(self.tmp), **self.extra_env}

    def cwd(self) -> Path:
        return REPO

    def ready(self) -> bool:
        try:
            if requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code != 200:
                return False
            if requests.get(self.metrics_url, timeout=2).status_code != 200:
                return False
            with grpc.insecure_channel(self.grpc_target) as channel:
                return GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=2).ready
        except (requests.RequestException, grpc.RpcError):
            return False

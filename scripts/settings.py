"""Serving settings: the one definition of listener addresses, ports and per-model worker
settings. The archive step writes them into config.properties, the serve script passes them to
TorchServe as its own TS_* environment overrides, and clients and tests build URLs from them.

Environment overrides (all optional):
  SERVE_HOST (127.0.0.1), SERVE_INFERENCE_PORT (8080), SERVE_MANAGEMENT_PORT (8081),
  SERVE_METRICS_PORT (8082), SERVE_GRPC_INFERENCE_PORT (7070), SERVE_GRPC_MANAGEMENT_PORT (7071),
  SERVE_UI_PORT (8090: the try-it page), SERVE_CORS_ORIGIN (default: the page's own origin;
  set it to the page's URL when the page talks to a cluster endpoint),
  SERVE_KSERVE_HTTP_PORT (8085) and SERVE_KSERVE_GRPC_PORT (8086): the KServe-native runtime
  (scripts/runtime/)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from scripts.process import free_ports

# TorchServe's own Prometheus metric names that the tools read.
METRIC_REQUESTS_TOTAL = "ts_inference_requests_total"
METRIC_LATENCY_US = "ts_inference_latency_microseconds"

# The default model: trained on the default dataset (model/data.py, Fashion-MNIST) under its name,
# kept in runs/<name>/, served under that name (the Makefile's MODEL too: tests/test_settings.py).
DEFAULT_MODEL = "fashion-mnist"
DEFAULT_CHECKPOINT = Path("runs") / DEFAULT_MODEL / "model.pt"

# Where KServe's storage initializer puts the storageUri contents inside the pod.
KSERVE_MODEL_MOUNT = "/mnt/models"


@dataclass(frozen=True)
class ServingSettings:
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    ui_port: int = 8090
    kserve_http_port: int = 8085  # KServe-native runtime: v1/v2 REST, /metrics
    kserve_grpc_port: int = 8086  # KServe-native runtime: OIP gRPC
    cors_origin: str = ""  # empty: the try-it page's origin on this host

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ServingSettings":
        values = {}
        for f in fields(cls):
            raw = env.get(f"SERVE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.type in (int, "int"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"SERVE_{f.name.upper()} must be a port number, got {raw!r}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def inference_url(self) -> str:
        return self.url(self.inference_port)

    @property
    def management_url(self) -> str:
        return self.url(self.management_port)

    @property
    def metrics_url(self) -> str:
        return f"{self.url(self.metrics_port)}/metrics"

    @property
    def ui_url(self) -> str:
        return self.url(self.ui_port)

    @property
    def allowed_origin(self) -> str:
        return self.cors_origin or self.ui_url

    def torchserve_properties(self) -> dict[str, str]:
        """Listener lines of config.properties. With enable_envvars_config=true TorchServe also
        reads each as TS_<NAME> from the environment (see `torchserve_env`)."""
        return {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.url(self.metrics_port),
            "grpc_inference_address": self.host,
            "grpc_inference_port": str(self.grpc_inference_port),
            "grpc_management_address": self.host,
            "grpc_management_port": str(self.grpc_management_port),
            # Browsers may call the inference API only from the try-it page's origin.
            "cors_allowed_origin": self.allowed_origin,
            "cors_allowed_methods": "GET, POST, OPTIONS",
            "cors_allowed_headers": "Content-Type",
        }

    def torchserve_env(self) -> dict[str, str]:
        return {f"TS_{k.upper()}": v for k, v in self.torchserve_properties().items()}


@dataclass(frozen=True)
class FrontendSettings:
    """Server-wide TorchServe frontend settings written into config.properties. The defaults are
    what `make serve` and a pod run; the reliability suite (scripts/reliability.py) turns on the
    model API for its rollout and shrinks the queue to provoke overload 503s."""

    # Jobs waiting per model before the frontend answers 503 at once (TorchServe's default: 100).
    job_queue_size: int = 100
    # Register/unregister/set-default over the management API (TorchServe 0.12 default: off;
    # models then come only from model_snapshot).
    enable_model_api: bool = False


def loopback_settings() -> ServingSettings:
    """TorchServe's five listeners on free loopback ports (tests, benchmarks, the reliability suite)."""
    inf, mgmt, met, grpc_inf, grpc_mgmt = free_ports(5)
    return ServingSettings(host="127.0.0.1", inference_port=inf, management_port=mgmt, metrics_port=met,
                           grpc_inference_port=grpc_inf, grpc_management_port=grpc_mgmt)


@dataclass(frozen=True)
class ModelServingSettings:
    """Per-model serving settings: workers and batching (config.properties' model_snapshot) and
    input limits (model_spec.json, enforced by the handler)."""

    workers: int = 1
    batch_size: int = 8
    max_batch_delay_ms: int = 5
    response_timeout_s: int = 120
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS

"""What the tools serve and how TorchServe's frontend and workers are set: the default model,
per-model workers, batching and input limits, and the frontend's queue and model API. The archive
step writes them into config.properties; where servers listen is handlers/settings.py's
ServingSettings (the SERVE_* environment)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from handlers.settings import RequestLimits, ServingSettings
from handlers.spec import ServingPolicy
from scripts.serve.process import free_ports

# TorchServe's own Prometheus metric names that the tools read.
METRIC_REQUESTS_TOTAL = "ts_inference_requests_total"
METRIC_LATENCY_US = "ts_inference_latency_microseconds"

# The default model: trained on the default dataset (model/data.py, Fashion-MNIST) under its name,
# kept in runs/<name>/, served under that name (the Makefile's MODEL too: tests/serve/test_settings.py).
DEFAULT_MODEL = "fashion-mnist"
DEFAULT_CHECKPOINT = Path("runs") / DEFAULT_MODEL / "model.pt"

# Where KServe's storage initializer puts the storageUri contents inside the pod.
KSERVE_MODEL_MOUNT = "/mnt/models"


@dataclass(frozen=True)
class FrontendSettings:
    """Server-wide TorchServe frontend settings written into config.properties. The defaults are
    what `make serve` and a pod run; the reliability suite (scripts/harness/reliability/) turns on the
    model API for its rollout and shrinks the queue to provoke overload 503s."""

    # Jobs waiting per model before the frontend answers 503 at once: the KServe-native runtime's
    # queue_size (TorchServe's own default is the same 100).
    job_queue_size: int = RequestLimits().queue_size
    # Register/unregister/set-default over the management API (TorchServe 0.12 default: off;
    # models then come only from model_snapshot).
    enable_model_api: bool = False


def loopback_settings() -> ServingSettings:
    """TorchServe's listeners on free loopback ports (tests, benchmarks, the reliability suite)."""
    inf, mgmt, met, frontend_met, grpc_inf, grpc_mgmt, inf_up, grpc_up = free_ports(8)
    return ServingSettings(host="127.0.0.1", inference_port=inf, management_port=mgmt, metrics_port=met,
                           frontend_metrics_port=frontend_met, grpc_inference_port=grpc_inf,
                           grpc_management_port=grpc_mgmt, inference_upstream_port=inf_up,
                           grpc_inference_upstream_port=grpc_up)


@dataclass(frozen=True)
class ModelServingSettings:
    """Per-model serving settings given to the archive step: the serving policy (workers, batching,
    threads, memory format: chosen from the model's cost unless given, scripts/serve/policy.py) and
    any field of it overridden, both written into model_spec.json, which config.properties'
    model_snapshot is derived from; input limits (model_spec.json, enforced by the handler)."""

    policy: ServingPolicy | None = None  # None: chosen from the model's cost
    workers: int | None = None  # None: the policy's (likewise below)
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    torch_threads: int | None = None
    channels_last: bool | None = None
    torchserve_workers: int | None = None
    response_timeout_s: int = 120
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def apply(self, policy: ServingPolicy) -> ServingPolicy:
        """`policy` (or this one's own) with the fields given here overriding it."""
        given = {f.name: getattr(self, f.name) for f in fields(ServingPolicy) if getattr(self, f.name) is not None}
        return replace(self.policy or policy, **given)

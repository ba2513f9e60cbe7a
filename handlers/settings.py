"""The SERVE_* environment: one prefix, one parser, and the settings read from it.

ServingSettings (here) says where the servers listen; InferenceOptions (handlers/accel.py) says how
the model runs. Both are typed, defaulted dataclasses read by `from_env`, so a value that cannot
be parsed is refused the same way everywhere, naming its variable. They live in the handler
package because the handler and the KServe-native runtime read them and both ship without the
tools; the archive step, the serve script, clients and tests import them from here.

Listener overrides (all optional):
  SERVE_HOST (127.0.0.1), SERVE_INFERENCE_PORT (8080), SERVE_MANAGEMENT_PORT (8081),
  SERVE_METRICS_PORT (8082: TorchServe's /metrics, served by handlers/exporter.py),
  SERVE_FRONTEND_METRICS_PORT (8092: TorchServe's frontend's own, loopback only, read by the exporter),
  SERVE_GRPC_INFERENCE_PORT (7070), SERVE_GRPC_MANAGEMENT_PORT (7071),
  SERVE_UI_PORT (8090: the try-it page), SERVE_CORS_ORIGIN (default: the page's own origin;
  set it to the page's URL when the page talks to a cluster endpoint),
  SERVE_KSERVE_HTTP_PORT (8085), SERVE_KSERVE_GRPC_PORT (8086) and SERVE_KSERVE_METRICS_PORT
  (8087: its /metrics, apart from the inference API): the KServe-native runtime (scripts/runtime/)

Request limits (RequestLimits; the chart's `limits` sets them in both runtimes' pods):
  SERVE_MAX_REQUEST_BYTES, SERVE_MAX_IMAGES_PER_REQUEST, SERVE_QUEUE_SIZE, SERVE_MAX_INFLIGHT,
  SERVE_BODY_TIMEOUT_S, SERVE_RETRY_AFTER_S
Authentication (AuthSettings; the chart's `auth`): SERVE_TOKEN_FILE, a file of bearer tokens
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field, fields
from typing import Mapping

from handlers.limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_REQUEST_BYTES

ENV_PREFIX = "SERVE_"


class SettingsError(ValueError):
    """A SERVE_* value that cannot be parsed, named with its variable."""


def PORT(default: int):
    """A field that holds a TCP port."""
    return field(default=default, metadata={"port": True})


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def parse_flag(var: str, raw: str, auto: bool) -> bool | None:
    value = raw.strip().lower()
    if auto and value == "auto":
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var} must be {'auto, true or false' if auto else 'true or false'}, got {raw!r}")


def parse_value(var: str, raw: str, kind, port: bool = False):
    """One SERVE_* string as the field's type: int (a port, or a positive count), bool, bool | None
    (None is "auto") or str."""
    if kind in (int, int | None):
        text = raw.strip()
        if port:
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise SettingsError(f"{var} must be a port number, got {raw!r}")
        elif not text.isdigit() or int(text) < 1:
            raise SettingsError(f"{var} must be a positive integer, got {raw!r}")
        return int(text)
    if kind in (bool, bool | None):
        return parse_flag(var, raw, auto=kind != bool)
    return raw.strip()


def from_env(cls, env: Mapping[str, str] = os.environ):
    """An instance of the dataclass `cls` with each field overridden by SERVE_<FIELD> when set."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        var = env_name(f.name)
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        values[f.name] = parse_value(var, raw, hints[f.name], port=f.metadata.get("port", False))
    return cls(**values)


@dataclass(frozen=True)
class ServingSettings:
    host: str = "127.0.0.1"
    inference_port: int = PORT(8080)
    management_port: int = PORT(8081)
    metrics_port: int = PORT(8082)  # handlers/exporter.py: the frontend's metrics and the handler's
    frontend_metrics_port: int = PORT(8092)  # TorchServe's frontend's own, on loopback
    grpc_inference_port: int = PORT(7070)
    grpc_management_port: int = PORT(7071)
    # TorchServe's own inference listeners, on loopback, when the exporter authenticates callers on
    # inference_port and grpc_inference_port (handlers/auth_proxy.py)
    inference_upstream_port: int = PORT(8093)
    grpc_inference_upstream_port: int = PORT(7072)
    ui_port: int = PORT(8090)
    kserve_http_port: int = PORT(8085)  # KServe-native runtime: v1/v2 REST and the probes
    kserve_grpc_port: int = PORT(8086)  # KServe-native runtime: OIP gRPC
    kserve_metrics_port: int = PORT(8087)  # KServe-native runtime: /metrics, never behind a token
    cors_origin: str = ""  # empty: the try-it page's origin on this host

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ServingSettings":
        return from_env(cls, env)

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

    def torchserve_properties(self, authenticated: bool = False) -> dict[str, str]:
        """Listener lines of config.properties. With enable_envvars_config=true TorchServe also
        reads each as TS_<NAME> from the environment (see `torchserve_env`). `authenticated`:
        the exporter holds the inference ports and TorchServe's own listeners are on loopback."""
        return {
            "inference_address": (f"http://127.0.0.1:{self.inference_upstream_port}" if authenticated
                                  else self.inference_url),
            "management_address": self.management_url,
            # the exporter serves metrics_port and reads the frontend's on loopback
            "metrics_address": f"http://127.0.0.1:{self.frontend_metrics_port}",
            "grpc_inference_address": "127.0.0.1" if authenticated else self.host,
            "grpc_inference_port": str(self.grpc_inference_upstream_port if authenticated else self.grpc_inference_port),
            "grpc_management_address": self.host,
            "grpc_management_port": str(self.grpc_management_port),
            # Browsers may call the inference API only from the try-it page's origin.
            "cors_allowed_origin": self.allowed_origin,
            "cors_allowed_methods": "GET, POST, OPTIONS",
            "cors_allowed_headers": "Content-Type, Authorization",  # the page's token field
        }

    def torchserve_env(self, authenticated: bool = False) -> dict[str, str]:
        return {f"TS_{k.upper()}": v for k, v in self.torchserve_properties(authenticated).items()}


@dataclass(frozen=True)
class RequestLimits:
    """What one server takes before it refuses, so that its memory stays bounded whatever callers
    send. The KServe-native runtime enforces all of them; TorchServe's frontend has the body size
    (max_request_size) and the queue (job_queue_size), its handler the images per request. The
    chart's `limits` values must equal these defaults (tests/deploy/test_k8s.py)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # a REST body or gRPC message: 413 / RESOURCE_EXHAUSTED
    max_images_per_request: int = DEFAULT_MAX_IMAGES  # 400 beyond
    queue_size: int = 100  # requests waiting per model for a forward pass: 503 beyond (TorchServe's default)
    max_inflight: int = 64  # requests inside one server at once, reading included: 503 beyond
    body_timeout_s: int = 30  # a REST body not received whole by then: 408
    retry_after_s: int = 1  # Retry-After of each 503

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "RequestLimits":
        return from_env(cls, env)


@dataclass(frozen=True)
class AuthSettings:
    """Opt-in bearer-token authentication of the inference APIs (handlers/auth.py): the file of
    accepted tokens, as a Kubernetes Secret mounts it. Empty: no authentication."""

    token_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "AuthSettings":
        return from_env(cls, env)

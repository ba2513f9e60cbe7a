"""Jaeger, a tracing backend built here from its Go module (github.com/jaegertracing/jaeger, its
v2 `cmd/jaeger`: the OpenTelemetry collector with Jaeger's storage and query), run on loopback with
in-memory storage: OTLP in (gRPC and HTTP), traces out through its query API (`/api/v3`) and UI.
The KServe-native runtime's traces go there when OTEL_EXPORTER_OTLP_ENDPOINT names it.

    python -m scripts.monitoring.jaeger               # make traces: builds once, runs until Ctrl-C
    python -m scripts.monitoring.jaeger --build-only  # make jaeger-build

The binary is built once into the cluster cache (scripts/cluster/build.py GoBinary; minutes on 2
cores), like the other Go programs here.
"""
from __future__ import annotations

import argparse
import base64
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from scripts.cluster.build import BuildError, GoBinary
from scripts.serve.process import ServerError, ServerProcess, free_ports

MODULE = "github.com/jaegertracing/jaeger"
VERSION = "v1.76.0"  # Jaeger v2.x's Go module tag (its v2 binary is this module's cmd/jaeger)
BINARY = GoBinary("jaeger", MODULE, VERSION, "./cmd/jaeger", ("-trimpath", "-ldflags", "-s -w"))
STORE = "memstore"


class JaegerError(ServerError):
    pass


def config(host: str, otlp_grpc: int, otlp_http: int, query_http: int, query_grpc: int) -> str:
    """The collector configuration: OTLP receivers, in-memory storage, the query API; no
    telemetry listener of its own (its default port would collide)."""
    return f"""\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      {STORE}:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: {STORE}
    http:
      endpoint: {host}:{query_http}
    grpc:
      endpoint: {host}:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{otlp_grpc}
      http:
        endpoint: {host}:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: {STORE}
"""


def hex_id(value: str) -> str:
    """A trace or span id as 32/16 lowercase hex digits (the API may give hex or base64)."""
    if value and all(c in "0123456789abcdefABCDEF" for c in value) and len(value) in (16, 32):
        return value.lower()
    return base64.b64decode(value).hex()


def attribute_value(value: dict):
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return value


def flatten(result: dict) -> list[dict]:
    """The spans of an OTLP JSON trace, each as {trace_id, span_id, parent_id, name, kind, start_ns,
    end_ns, attributes, status, service}."""
    spans = []
    for resource_spans in result.get("resourceSpans", []):
        resource = {a["key"]: attribute_value(a["value"])
                    for a in resource_spans.get("resource", {}).get("attributes", [])}
        for scope_spans in resource_spans.get("scopeSpans", []):
            for s in scope_spans.get("spans", []):
                spans.append({
                    "trace_id": hex_id(s["traceId"]), "span_id": hex_id(s["spanId"]),
                    "parent_id": hex_id(s["parentSpanId"]) if s.get("parentSpanId") else None,
                    "name": s["name"], "kind": s.get("kind"),
                    "start_ns": int(s["startTimeUnixNano"]), "end_ns": int(s["endTimeUnixNano"]),
                    "attributes": {a["key"]: attribute_value(a["value"]) for a in s.get("attributes", [])},
                    "status": s.get("status", {}), "service": resource.get("service.name")})
    return spans


class Jaeger(ServerProcess):
    name = "Jaeger"
    error = JaegerError

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", ports: list[int] | None = None):
        super().__init__(run_dir, "jaeger.out")
        self.host = host
        self.otlp_grpc, self.otlp_http, self.query_http, self.query_grpc = ports or free_ports(4)
        self.config_file = self.run_dir / "jaeger.yaml"
        self.exe: Path | None = None

    @property
    def otlp_http_endpoint(self) -> str:
        return f"http://{self.host}:{self.otlp_http}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.otlp_grpc}"

    @property
    def query_url(self) -> str:
        return f"http://{self.host}:{self.query_http}"

    def command(self) -> list[str]:
        self.exe = BINARY.build()
        self.config_file.write_text(config(self.host, self.otlp_grpc, self.otlp_http, self.query_http,
                                           self.query_grpc))
        return [str(self.exe), "--config", f"file:{self.config_file}"]

    def ready(self) -> bool:
        try:
            if requests.get(f"{self.query_url}/api/v3/services", timeout=2).status_code != 200:
                return False
            for port in (self.otlp_grpc, self.otlp_http):
                with socket.create_connection((self.host, port), timeout=2):
                    pass
            return True
        except (requests.RequestException, OSError):
            return False

    def trace(self, trace_id: str) -> list[dict]:
        """The spans stored for a trace (empty until they arrive)."""
        r = requests.get(f"{self.query_url}/api/v3/traces/{trace_id}", timeout=10)
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return flatten(r.json().get("result", {}))

    def find(self, service: str, since_ns: int, limit: int = 1000) -> list[dict]:
        """The spans of the service's traces that started since `since_ns` (epoch ns), at most `limit`
        traces."""
        def rfc3339(ns: int) -> str:
            return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        r = requests.get(f"{self.query_url}/api/v3/traces", timeout=10, params={
            "query.service_name": service, "query.start_time_min": rfc3339(since_ns - 1_000_000_000),
            "query.start_time_max": rfc3339(time.time_ns() + 1_000_000_000), "query.num_traces": limit})
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return flatten(r.json().get("result", {}))

    def services(self) -> list[str]:
        r = requests.get(f"{self.query_url}/api/v3/services", timeout=10)
        r.raise_for_status()
        return r.json().get("services", [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.monitoring.jaeger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("build/jaeger"))
    parser.add_argument("--otlp-grpc-port", type=int, default=4317)
    parser.add_argument("--otlp-http-port", type=int, default=4318)
    parser.add_argument("--ui-port", type=int, default=16686)
    parser.add_argument("--query-grpc-port", type=int, default=16685)
    parser.add_argument("--build-only", action="store_true", help="build the binary (once) and exit")
    args = parser.parse_args(argv)
    if args.build_only:
        try:
            print(f"jaeger: {BINARY.build()}")
        except BuildError as e:
            print(f"jaeger: error: {e}", file=sys.stderr)
            return 1
        return 0
    jaeger = Jaeger(args.run_dir, ports=[args.otlp_grpc_port, args.otlp_http_port, args.ui_port,
                                         args.query_grpc_port])
    try:
        jaeger.start(timeout=120)
    except (BuildError, JaegerError) as e:
        print(f"jaeger: error: {e}", file=sys.stderr)
        return 1
    print(f"jaeger: UI and query API at {jaeger.query_url}; send traces with\n"
          f"  OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_http_endpoint} make kserve\n"
          f"  (or OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_grpc_endpoint});"
          " Ctrl-C stops it", flush=True)
    try:
        jaeger.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        jaeger.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

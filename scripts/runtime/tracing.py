"""OpenTelemetry traces of the KServe-native runtime: one server span per inference request (REST
and gRPC), its parent taken from the caller's W3C `traceparent`, and a child span per stage:
decode (the request body to images), batch wait (queued until its batch starts), preprocess,
forward and postprocess (the batch's passes, shared by the requests batched together, each with
the batch's size). Off unless the standard OTEL_* environment asks for traces: an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER=otlp
or console; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none keeps them off. The SDK reads the
rest itself: the protocol (http/protobuf by default, or grpc), headers, timeout, sampler
(OTEL_TRACES_SAMPLER, e.g. parentbased_traceidratio), batch processor (OTEL_BSP_*), service name
and resource attributes. Turned off, nothing of OpenTelemetry is imported or run per request."""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterable, Mapping

from handlers.metrics import Observation

DEFAULT_SERVICE_NAME = "image-classifier"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("http/protobuf", "grpc")
# The handler's stopwatch stages as the spans name them (its "inference" is the forward pass)
STAGE_SPANS = (("preprocess", "preprocess"), ("inference", "forward"), ("postprocess", "postprocess"))
INSTRUMENTATION = "image_classifier.runtime"


class TracingError(ValueError):
    """OTEL_* settings this runtime cannot act on."""


def exporter_wanted(env: Mapping[str, str] = os.environ) -> str | None:
    """'otlp' or 'console' as the environment asks, None for no traces (the default)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter:
        return "otlp" if any(env.get(name, "").strip() for name in ENDPOINT_ENVS) else None
    if exporter == "none":
        return None
    if exporter not in ("otlp", "console"):
        raise TracingError(f"OTEL_TRACES_EXPORTER={exporter!r}: this runtime exports traces with otlp or "
                           "console (or none)")
    return exporter


def otlp_protocol(env: Mapping[str, str] = os.environ) -> str:
    protocol = next((env[n].strip() for n in PROTOCOL_ENVS if env.get(n, "").strip()), PROTOCOLS[0])
    if protocol not in PROTOCOLS:
        raise TracingError(f"OTLP protocol {protocol!r}: this runtime sends {' or '.join(PROTOCOLS)}")
    return protocol


class Tracer:
    """The runtime's spans, over an SDK TracerProvider (closed with `shutdown`, which sends what
    is still buffered)."""

    def __init__(self, provider):
        from opentelemetry import context, propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self._context, self._propagate, self._trace = context, propagate, trace
        self.server_kind = trace.SpanKind.SERVER

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Tracer | None":
        """The tracer the environment asks for (None: traces off); the SDK reads os.environ."""
        exporter_name = exporter_wanted(env)
        if exporter_name is None:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        given = env.get("OTEL_RESOURCE_ATTRIBUTES", "")
        ours = {} if "host.name=" in given else {"host.name": socket.gethostname()}  # a pod's name
        if not (env.get("OTEL_SERVICE_NAME") or "service.name=" in given):
            ours["service.name"] = DEFAULT_SERVICE_NAME
        provider = TracerProvider(resource=Resource.create(ours))
        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        elif otlp_protocol(env) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def server_span(self, name: str, carrier: Mapping[str, str], attributes: dict):
        """The current span for one request, a child of the caller's `traceparent` if it sent one;
        its status is set by the caller (a 4xx is the client's, not an error of this server)."""
        return self.tracer.start_as_current_span(
            name, context=self._propagate.extract(carrier), kind=self.server_kind, attributes=attributes,
            record_exception=False, set_status_on_exception=False)

    def mark(self, span, failed: bool, attributes: dict) -> None:
        span.set_attributes(attributes)
        if failed:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))

    def request(self) -> "RequestTrace | None":
        """The current request's trace, for its stage spans (None: no sampled request span)."""
        if not self._trace.get_current_span().is_recording():
            return None
        return RequestTrace(self, self._context.get_current())


@dataclass
class RequestTrace:
    """One request's place in its trace: the context its stage spans are children of."""

    tracer: Tracer
    parent: object  # an opentelemetry Context
    queued_ns: int = 0

    @contextmanager
    def stage(self, name: str):
        with self.tracer.tracer.start_as_current_span(name, context=self.parent):
            yield

    def queued(self) -> None:
        self.queued_ns = time.time_ns()

    def span(self, name: str, start_ns: int, end_ns: int, attributes: dict) -> None:
        span = self.tracer.tracer.start_span(name, context=self.parent, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)


def stage(trace: RequestTrace | None, name: str):
    """A stage span around a block when the request is traced, else nothing."""
    return nullcontext() if trace is None else trace.stage(name)


def record_batch(traces: Iterable[RequestTrace], obs: Observation, images: int) -> None:
    """After a batch of `images` ran: each traced request of it gets its batch wait (from its
    queueing to the batch's start) and the batch's stages, with the batch's size, as spans under
    its request."""
    traces = list(traces)
    if not traces or not obs.intervals:
        return
    started = min(start for start, _ in obs.intervals.values())
    batch = {"batch.images": images}
    for trace in traces:
        trace.span("batch wait", min(trace.queued_ns or started, started), started, batch)
        for stage_name, span_name in STAGE_SPANS:
            if stage_name in obs.intervals:
                trace.span(span_name, *obs.intervals[stage_name], batch)

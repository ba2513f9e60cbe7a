"""scripts/runtime/tracing.py in-process: traces are off unless the OTEL_* environment asks for
them, and a batch's stages become spans under each traced request (the SDK's in-memory exporter
stands in for the OTLP backend here; tests/runtime/test_tracing_jaeger.py sends to a real one)."""
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from handlers.metrics import Observation, Stopwatch
from scripts.runtime.model import MarModel
from scripts.runtime.tracing import Tracer, TracingError, exporter_wanted, otlp_protocol, record_batch
from tests.helpers import MODEL_NAME, png_bytes

REPO = Path(__file__).resolve().parents[2]
STAGES = ["batch wait", "preprocess", "forward", "postprocess"]


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracer(provider), exporter
    provider.shutdown()


@pytest.mark.parametrize("env, wanted", [
    ({}, None),
    ({"OTEL_SERVICE_NAME": "x"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
])
def test_traces_are_off_unless_the_otel_environment_asks_for_them(env, wanted):
    assert exporter_wanted(env) == wanted
    if wanted is None:
        assert Tracer.from_env(env) is None


def test_settings_it_cannot_act_on_are_refused_by_name():
    with pytest.raises(TracingError, match="zipkin"):
        exporter_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingError, match="http/json"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}) == "grpc"


@pytest.mark.integration
def test_the_runtime_stops_at_start_on_a_setting_it_cannot_act_on(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.runtime", "--model-store", str(tmp_path)], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "zipkin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "OTEL_TRACES_EXPORTER='zipkin'" in proc.stderr


def test_a_stopwatch_reads_the_wall_clock_only_for_a_trace():
    plain, traced = Observation(), Observation(intervals={})
    for obs in (plain, traced):
        for _ in range(2):  # a stage timed twice spans from its first start to its last end
            with Stopwatch(obs, "preprocess"):
                time.sleep(0.002)
    assert plain.intervals is None and plain.seconds["preprocess"] >= 0.004
    start, end = traced.intervals["preprocess"]
    assert end - start >= 4_000_000


def test_each_traced_request_of_a_batch_gets_its_wait_and_the_batch_stages(spans):
    tracer, exporter = spans
    traces = []
    for name in ("first", "second"):
        with tracer.server_span(name, {}, {}):
            traces.append(tracer.request())
            traces[-1].queued()
            time.sleep(0.003)  # the first waits longer
    obs = Observation(intervals={}, batch_size=2)
    with Stopwatch(obs, "handle"):
        for stage in ("preprocess", "inference", "postprocess"):
            with Stopwatch(obs, stage):
                time.sleep(0.001)
    record_batch(traces, obs, images=3)
    finished = exporter.get_finished_spans()
    servers = {s.name: s for s in finished if s.kind == SpanKind.SERVER}
    for name, trace in zip(("first", "second"), traces):
        server = servers[name]
        children = sorted((s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id),
                          key=lambda s: s.start_time)
        assert [s.name for s in children] == STAGES
        assert all(s.context.trace_id == server.context.trace_id for s in children)
        assert all(s.attributes["batch.images"] == 3 for s in children)
        wait, pre, fwd, post = children
        assert wait.start_time == trace.queued_ns and wait.end_time == obs.intervals["handle"][0]
        assert wait.end_time <= pre.start_time <= pre.end_time <= fwd.start_time <= fwd.end_time <= post.start_time
    waits = [next(s for s in finished if s.name == "batch wait" and s.context.trace_id == servers[n].context.trace_id)
             for n in ("first", "second")]
    assert waits[0].end_time - waits[0].start_time > waits[1].end_time - waits[1].start_time


def test_a_caller_that_does_not_sample_gets_no_stage_spans(spans):
    tracer, exporter = spans
    not_sampled = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
    with tracer.server_span("request", not_sampled, {}):
        assert tracer.request() is None
    assert exporter.get_finished_spans() == ()


def test_the_model_traces_decode_and_its_batch_under_the_request(store, tmp_path, spans):
    tracer, exporter = spans
    model = MarModel(store / "model-store" / f"{MODEL_NAME}.mar", tmp_path, device="cpu", tracer=tracer)
    model.load()
    caller = "0af7651916cd43dd8448eb211c80319c"

    async def request():
        with tracer.server_span("POST /v1/models/{model}:predict", {"traceparent": f"00-{caller}-b7ad6b7169203331-01"},
                                {}):
            job = await model.preprocess(png_bytes(Image.new("L", (28, 28), 128)), {"content-type": "image/png"})
            job = await model.predict(job)
            return await model.postprocess(job)
    try:
        body = asyncio.run(request())
    finally:
        model.stop()
    assert isinstance(body, dict) and len(body) > 0 and "error" not in body  # {label: probability}
    finished = exporter.get_finished_spans()
    server = next(s for s in finished if s.kind == SpanKind.SERVER)
    assert f"{server.context.trace_id:032x}" == caller and f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
    children = sorted((s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id),
                      key=lambda s: s.start_time)
    assert [s.name for s in children] == ["decode", *STAGES]

"""Traces of the KServe-native runtime in a real tracing backend: Jaeger built from its Go module
(scripts/monitoring/jaeger.py), fed over OTLP/HTTP by one runtime and over OTLP/gRPC by another,
as the standard OTEL_* variables configure them. Each request carries the caller's W3C
`traceparent`; the test reads the trace back from Jaeger's query API."""
import json
import time
import uuid

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from PIL import Image

from scripts.client import predict
from scripts.monitoring.jaeger import Jaeger
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from tests.helpers import MODEL_NAME, png_bytes

pytestmark = pytest.mark.integration
STAGES = ["decode", "batch wait", "preprocess", "forward", "postprocess"]
IMAGE = png_bytes(Image.new("L", (28, 28), 90))


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    backend = Jaeger(tmp_path_factory.mktemp("jaeger")).start(timeout=120)
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def traced(request, jaeger, store, tmp_path_factory):
    """A runtime sending its traces to Jaeger over the parameter's OTLP protocol."""
    endpoint = jaeger.otlp_http_endpoint if request.param == "http/protobuf" else jaeger.otlp_grpc_endpoint
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": request.param,
           "OTEL_SERVICE_NAME": f"classifier-{request.param.replace('/', '-')}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    rt = KServeRuntime(store / "model-store", tmp_path_factory.mktemp("traced-run"), *free_ports(2),
                       extra_env=env).start(timeout=180)
    yield rt, env["OTEL_SERVICE_NAME"]
    rt.stop()
    assert "Traceback" not in rt.log_tail(200)  # no exporter error on the way out


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def wait_for(jaeger: Jaeger, trace_id: str, spans: int, timeout: float = 30) -> list[dict]:
    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        found = jaeger.trace(trace_id)
        if len(found) >= spans:
            return found
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id}: {len(found)} of {spans} spans in Jaeger after {timeout} s: "
                         f"{[s['name'] for s in found]}")


def check_request_trace(spans: list[dict], trace_id: str, caller_span: str, service: str) -> dict:
    """The server span is the caller's child; each stage is the server span's child, inside it and
    in order. Returns the server span."""
    [server] = [s for s in spans if s["parent_id"] == caller_span]
    assert server["trace_id"] == trace_id and server["service"] == service
    assert server["attributes"]["model.name"] == MODEL_NAME
    children = sorted((s for s in spans if s["parent_id"] == server["span_id"]), key=lambda s: s["start_ns"])
    assert [s["name"] for s in children] == STAGES
    for earlier, later in zip(children, children[1:]):
        assert earlier["end_ns"] <= later["start_ns"] + 1000  # the batch's stages follow the wait
    assert server["start_ns"] <= children[0]["start_ns"] and children[-1]["end_ns"] <= server["end_ns"]
    assert all(s["attributes"]["batch.images"] >= 1 for s in children[1:])
    return server


def test_a_rest_request_is_traced_under_the_callers_span(traced, jaeger):
    rt, service = traced
    header, trace_id, caller = traceparent()
    r = requests.post(f"{rt.url}/v1/models/{MODEL_NAME}:predict", data=IMAGE,
                      headers={"Content-Type": "image/png", "traceparent": header}, timeout=30)
    assert r.status_code == 200
    server = check_request_trace(wait_for(jaeger, trace_id, 1 + len(STAGES)), trace_id, caller, service)
    assert server["name"] == "POST /v1/models/{model}:predict"
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["http.route"] == "/v1/models/{model}:predict"


def test_a_grpc_request_is_traced_under_the_callers_span(traced, jaeger):
    rt, service = traced
    header, trace_id, caller = traceparent()
    request = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[IMAGE]))])
    with grpc.insecure_channel(rt.grpc_target) as channel:
        GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=[("traceparent", header)], timeout=30)
    server = check_request_trace(wait_for(jaeger, trace_id, 1 + len(STAGES)), trace_id, caller, service)
    assert server["name"] == "inference.GRPCInferenceService/ModelInfer"
    assert server["attributes"]["rpc.grpc.status_code"] == 0


def test_a_refused_request_is_traced_as_the_clients_error_not_the_servers(traced, jaeger):
    rt, _ = traced
    header, trace_id, caller = traceparent()
    r = requests.post(f"{rt.url}/v2/models/{MODEL_NAME}/infer", data=b"{not json",
                      headers={"Content-Type": "application/json", "traceparent": header}, timeout=30)
    assert r.status_code == 400
    [server] = wait_for(jaeger, trace_id, 1)
    assert server["parent_id"] == caller and server["name"] == "POST /v2/models/{model}/infer"
    assert server["attributes"]["http.response.status_code"] == 400
    assert server["status"].get("code") in (None, 0, "STATUS_CODE_UNSET")  # a 4xx is not the server's failure


def test_a_caller_that_does_not_sample_is_not_traced(traced, jaeger):
    """The parent's sampling decision holds (the SDK's default parentbased_always_on): a
    request whose traceparent is not sampled leaves nothing in Jaeger, while a sampled request
    sent after it arrives."""
    rt, _ = traced
    unsampled, unsampled_id, _ = traceparent(sampled=False)
    sampled, sampled_id, _ = traceparent()
    for header in (unsampled, sampled):
        r = requests.post(f"{rt.url}/v1/models/{MODEL_NAME}:predict", data=IMAGE,
                          headers={"Content-Type": "image/png", "traceparent": header}, timeout=30)
        assert r.status_code == 200
    wait_for(jaeger, sampled_id, 1 + len(STAGES))
    assert jaeger.trace(unsampled_id) == []


def test_without_a_traceparent_a_request_starts_its_own_trace(traced, jaeger):
    rt, service = traced
    before = time.time_ns()
    r = requests.post(f"{rt.url}/v1/models/{MODEL_NAME}:predict", data=IMAGE,
                      headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        roots = [s for s in jaeger.find(service, before) if s["parent_id"] is None]
        if roots:
            break
        time.sleep(0.2)
    assert roots and all(s["name"].startswith(("POST ", "inference.")) for s in roots), json.dumps(roots)[:500]



@pytest.mark.parametrize("protocol", ["v1", "v2", "oip"])
def test_the_client_cli_starts_the_trace_the_runtime_joins(traced, jaeger, protocol, tmp_path, capsys):
    rt, service = traced
    image = tmp_path / "image.png"
    image.write_bytes(IMAGE)
    assert predict.main([str(image), "--model", MODEL_NAME, "--protocol", protocol, "--url", rt.url,
                         "--grpc-target", rt.grpc_target, "--trace"]) == 0
    out = capsys.readouterr()
    trace_id = out.err.split("trace id: ")[1].split()[0]
    spans = wait_for(jaeger, trace_id, 1 + len(STAGES))
    [server] = [s for s in spans if s["name"].startswith(("POST ", "inference."))]
    assert server["parent_id"] is not None  # the client's own span id, from its traceparent
    check_request_trace(spans, trace_id, server["parent_id"], service)
    assert str(image) in out.out

"""The KServe-native runtime's request and queue metrics (handlers/metrics.py), from a real
runtime: every inference request to a served model on REST and gRPC, refusals at the edge
included, with its status class; each request's wait for its batch; the queue gauges; buckets
that resolve a millisecond."""
import base64

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from handlers import metrics as hm
from handlers.settings import RequestLimits
from tests.helpers import MODEL_NAME, metric_value as value

pytestmark = pytest.mark.integration
LABELS = {"ModelName": MODEL_NAME, "ModelVersion": "1.0", "Level": "Model"}


def scrape(runtime) -> str:
    return requests.get(runtime.metrics_url, timeout=10).text


def delta(before: str, after: str, name: str, **labels) -> float:
    return value(after, name, **LABELS, **labels) - value(before, name, **LABELS, **labels)


def v1_body(image: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(image).decode()}]}


def test_rest_requests_are_recorded_with_their_status_class(runtime, images):
    url = f"{runtime.url}/v1/models/{MODEL_NAME}:predict"
    before = scrape(runtime)
    assert requests.post(url, json=v1_body(images[0]), timeout=30).status_code == 200
    assert requests.post(f"{runtime.url}/v2/models/{MODEL_NAME}/infer", timeout=30, json={"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(images[1]).decode()]}]}).status_code == 200
    assert requests.post(url, json=v1_body(b"junk"), timeout=30).status_code == 400
    # refused at the edge before the body is read: still the model's request
    too_big = requests.post(url, data=b"x" * (RequestLimits().max_request_bytes + 1), timeout=30)
    assert too_big.status_code == 413
    assert requests.post(f"{runtime.url}/v1/models/no-such-model:predict", json=v1_body(images[0]), timeout=30).status_code == 404
    assert requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}", timeout=30).status_code == 200  # not inference
    after = scrape(runtime)
    count = f"{hm.REQUEST_SECONDS}_count"
    assert delta(before, after, count, protocol="rest", code="2xx") == 2
    assert delta(before, after, count, protocol="rest", code="4xx") == 2
    assert delta(before, after, count, protocol="rest", code="5xx") == 0
    assert 'ModelName="no-such-model"' not in after
    # each request that reached a batch waited for it once: the two good ones and the junk image
    # (decoded in the batch); not the refusals before it
    assert delta(before, after, f"{hm.QUEUE_WAIT_SECONDS}_count") == 3
    assert 0 < delta(before, after, f"{hm.REQUEST_SECONDS}_sum", protocol="rest") < 30


def test_grpc_inference_is_recorded_with_its_status_class(runtime, images):
    before = scrape(runtime)
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)

        def infer(image: bytes):
            tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(image)
            return stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]), timeout=30)

        infer(images[0])
        with pytest.raises(grpc.RpcError) as refused:
            infer(b"junk")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub.ServerReady(pb.ServerReadyRequest(), timeout=10)  # not inference
    after = scrape(runtime)
    count = f"{hm.REQUEST_SECONDS}_count"
    assert delta(before, after, count, protocol="grpc", code="2xx") == 1
    assert delta(before, after, count, protocol="grpc", code="4xx") == 1


def test_queue_gauges_are_exported_idle(runtime):
    text = scrape(runtime)
    assert f"# TYPE {hm.QUEUE_DEPTH} gauge" in text and f"# TYPE {hm.INFLIGHT} gauge" in text
    assert value(text, hm.QUEUE_DEPTH, **LABELS) == 0 and value(text, hm.INFLIGHT, **LABELS) == 0


def test_latency_buckets_resolve_below_five_milliseconds(runtime, images):
    requests.post(f"{runtime.url}/v1/models/{MODEL_NAME}:predict", json=v1_body(images[0]), timeout=30)
    text = scrape(runtime)
    edges = {line.split('le="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith(f"{hm.STAGE_SECONDS}_bucket{{") and f'ModelName="{MODEL_NAME}"' in line}
    assert {float(e) for e in edges if e != "+Inf"} == set(hm.LATENCY_BUCKETS)

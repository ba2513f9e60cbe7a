"""The KServe-native runtime's request limits, on a real runtime started with tight SERVE_* limits:
bodies refused by size before they are read (declared or chunked), slow uploads timed out, a cap
on requests at once and on each model's queue (503 + Retry-After; gRPC UNAVAILABLE), gRPC
messages over the limit, images per request; the server answers normally afterwards."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from scripts.serve.kserve_native import KServeRuntime, KServeRuntimeError
from scripts.serve.process import free_ports
from tests.helpers import IMAGENET_NAME, MODEL_NAME

pytestmark = pytest.mark.integration

LIMITS = {"SERVE_MAX_REQUEST_BYTES": str(2 * 1024 * 1024), "SERVE_MAX_IMAGES_PER_REQUEST": "3",
          "SERVE_QUEUE_SIZE": "2", "SERVE_MAX_INFLIGHT": "6", "SERVE_BODY_TIMEOUT_S": "2",
          "SERVE_RETRY_AFTER_S": "3"}
MAX_BYTES, TIMEOUT_S = int(LIMITS["SERVE_MAX_REQUEST_BYTES"]), int(LIMITS["SERVE_BODY_TIMEOUT_S"])


@pytest.fixture(scope="module")
def limited(store, tmp_path_factory):
    rt = KServeRuntime(store / "model-store", tmp_path_factory.mktemp("kserve-limits"), *free_ports(2),
                       extra_env=LIMITS).start()
    yield rt
    rt.stop()


def v1_body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def raw_exchange(rt: KServeRuntime, head: str, parts: list[bytes] = (), pause_s: float = 0.0,
                 read_timeout: float = 10.0) -> tuple[int, dict, dict]:
    """Send `head` and `parts` (pausing between them) on a plain socket and read the answer:
    status, headers, JSON body. Sending stops quietly once the server has closed its side."""
    with socket.create_connection((rt.host, rt.http_port), timeout=read_timeout) as s:
        s.sendall(head.encode())
        for part in parts:
            time.sleep(pause_s)
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data) < header_end(data) + content_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def header_end(data: bytes) -> int:
    return data.index(b"\r\n\r\n") + 4


def content_length(data: bytes) -> int:
    for line in data[:header_end(data)].decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            return int(line.split(":")[1])
    return 0


def post_head(rt: KServeRuntime, model: str, extra: str) -> str:
    return (f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {rt.host}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n")


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(limited):
    started = time.monotonic()
    status, headers, body = raw_exchange(limited, post_head(limited, MODEL_NAME, f"Content-Length: {MAX_BYTES + 1}\r\n"))
    assert (status, body["reason"], body["code"]) == (413, "request_too_large", 413)
    assert f"{MAX_BYTES + 1} bytes" in body["error"] and str(MAX_BYTES) in body["error"]
    assert headers["content-type"] == "application/json"
    assert time.monotonic() - started < TIMEOUT_S  # answered at once, not after waiting for a body


def test_a_chunked_body_is_refused_once_it_passes_the_limit(limited):
    chunk = b"x" * (256 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    parts = [framed] * (MAX_BYTES // len(chunk) + 4) + [b"0\r\n\r\n"]
    status, _, body = raw_exchange(limited, post_head(limited, MODEL_NAME, "Transfer-Encoding: chunked\r\n"), parts)
    assert (status, body["reason"]) == (413, "request_too_large")


def test_a_slow_upload_gets_408_after_the_body_timeout(limited, images):
    payload = v1_body(images[:1])
    started = time.monotonic()
    status, _, body = raw_exchange(limited, post_head(limited, MODEL_NAME, f"Content-Length: {len(payload)}\r\n"),
                                   [payload[:10]])
    took = time.monotonic() - started
    assert (status, body["reason"]) == (408, "request_timeout")
    assert f"within {TIMEOUT_S} s" in body["error"]
    assert TIMEOUT_S - 0.5 <= took < TIMEOUT_S + 5
    ok = requests.post(f"{limited.url}/v1/models/{MODEL_NAME}:predict", data=payload, timeout=10)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_beyond_max_inflight_requests_get_503_with_retry_after_until_slots_free(limited, images):
    """Six uploads that stall hold every slot: the seventh request gets 503 at once; once they
    time out (408), requests are served again."""
    payload = v1_body(images[:1])
    head = post_head(limited, MODEL_NAME, f"Content-Length: {len(payload)}\r\n")
    held = []

    def stall():
        held.append(raw_exchange(limited, head, [payload[:10]]))

    threads = [threading.Thread(target=stall) for _ in range(int(LIMITS["SERVE_MAX_INFLIGHT"]))]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every stalled upload is in the server
    refused = requests.post(f"{limited.url}/v1/models/{MODEL_NAME}:predict", data=payload, timeout=10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == LIMITS["SERVE_RETRY_AFTER_S"]
    assert refused.json()["reason"] == "overloaded" and "requests in progress (at most 6)" in refused.json()["error"]
    for t in threads:
        t.join()
    assert [status for status, _, _ in held] == [408] * len(threads)
    assert requests.post(f"{limited.url}/v1/models/{MODEL_NAME}:predict", data=payload, timeout=10).status_code == 200


def test_a_full_model_queue_answers_503_and_every_accepted_request_its_own_answer(limited, chelsea):
    """Six requests of three photos at once on the heavy model (one pass at a time, queue of 2):
    beyond the two queued behind the running pass, 503 with Retry-After; the others answer."""
    body = v1_body([chelsea] * 3)

    def post():
        return requests.post(f"{limited.url}/v1/models/{IMAGENET_NAME}:predict", data=body, timeout=60)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(), range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    full = [r for r in answers if r.status_code == 503]
    assert all(r.headers["retry-after"] == "3" and r.json()["reason"] == "overloaded" for r in full)
    assert any("wait for this model (queue size 2)" in r.json()["error"] for r in full)
    first = [r.json()["predictions"] for r in answers if r.status_code == 200]
    assert all(p == first[0] for p in first) and len(first[0]) == 3
    metrics = requests.get(limited.metrics_url, timeout=10).text
    rejected = [line for line in metrics.splitlines() if line.startswith("image_handler_rejected_total{")
                and f'ModelName="{IMAGENET_NAME}"' in line and 'reason="overloaded"' in line]
    assert rejected and float(rejected[0].split()[-1]) == len(full)


def test_more_images_than_allowed_are_refused_by_count(limited, images):
    r = requests.post(f"{limited.url}/v1/models/{MODEL_NAME}:predict", data=v1_body(images[:4]), timeout=10)
    assert r.status_code == 400 and "at most 3 instances per request, got 4" in r.json()["error"]


def grpc_infer(stub, model: str, images: list[bytes]):
    request = pb.ModelInferRequest(model_name=model, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(images)])])
    request.raw_input_contents.append(b"".join(len(i).to_bytes(4, "little") + i for i in images))
    return stub.ModelInfer(request, timeout=60)


def test_grpc_refuses_a_message_over_the_limit_and_a_full_queue(limited, chelsea, images):
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            grpc_infer(stub, MODEL_NAME, [b"\0" * (MAX_BYTES + 1)])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        def call(_):
            try:
                return grpc_infer(stub, IMAGENET_NAME, [chelsea] * 3), None
            except grpc.RpcError as err:
                return None, err

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(call, range(6)))
        refused = [err for _, err in outcomes if err is not None]
        assert refused and all(err.code() == grpc.StatusCode.UNAVAILABLE for err in refused)
        assert all("queue size 2" in err.details() for err in refused)
        assert any(reply is not None for reply, _ in outcomes)
        assert grpc_infer(stub, MODEL_NAME, images[:1]).model_name == MODEL_NAME  # serving again


def test_an_unparsable_limit_stops_the_runtime_with_its_name(store, tmp_path):
    rt = KServeRuntime(store / "model-store", tmp_path, *free_ports(2), extra_env={"SERVE_QUEUE_SIZE": "many"})
    with pytest.raises(KServeRuntimeError, match="SERVE_QUEUE_SIZE must be a positive integer"):
        rt.start(timeout=60)

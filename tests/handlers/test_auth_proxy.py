"""Bearer-token authentication in front of a real TorchServe (handlers/auth_proxy.py, run by the
exporter as the chart runs it): every inference route and gRPC method refuses a missing and a wrong
token and, with a good one, answers exactly as TorchServe's own (loopback) listener does; the probes
and CORS preflights need none; a body over TorchServe's limit and a stalled upload are refused before
TorchServe; a rotated token file takes effect without a restart."""
from __future__ import annotations

import os
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from google.protobuf import empty_pb2

from handlers.auth import bearer
from scripts.client import grpc_stubs
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import IMAGENET_NAME, MODEL_NAME

pytestmark = pytest.mark.integration

GOOD, OTHER = "ts-token-5be1", "ts-token-c40d"
BODY_TIMEOUT_S = 3
MAX_INFLIGHT = 4


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("secret") / "tokens"
    f.write_text(f"{GOOD}\n{OTHER}\n")
    return f


@pytest.fixture(scope="module")
def guarded(store, token_file, tmp_path_factory):
    ts = TorchServe(store, loopback_settings(), tmp_path_factory.mktemp("ts-auth"), token_file=token_file,
                    extra_env={"SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "SERVE_MAX_INFLIGHT": str(MAX_INFLIGHT)})
    ts.start(timeout=180)
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def direct(guarded) -> str:
    """TorchServe's own REST listener, on loopback behind the proxy."""
    return f"http://127.0.0.1:{guarded.settings.inference_upstream_port}"


def routes(image: bytes) -> list[tuple[str, str, dict]]:
    return [("POST", f"/predictions/{MODEL_NAME}", {"data": image}),
            ("POST", f"/predictions/{MODEL_NAME}", {"files": {"data": ("x.png", image, "image/png")}}),
            ("POST", f"/predictions/{MODEL_NAME}", {"data": b"not an image"}),  # TorchServe's 4xx passes through
            ("POST", "/predictions/no-such-model", {"data": image}),
            ("POST", f"/v2/models/{MODEL_NAME}/infer", {"json": {"inputs": []}}),
            ("GET", f"/v2/models/{MODEL_NAME}", {}),
            ("OPTIONS", "/", {})]  # the API description


def test_every_rest_route_refuses_a_missing_or_wrong_token_and_answers_as_torchserve(guarded, direct, images):
    url = guarded.settings.inference_url
    for method, path, kw in routes(images[0]):
        missing = requests.request(method, url + path, timeout=30, **kw)
        assert missing.status_code == 401, path
        assert missing.json() == {"error": "a bearer token is required (Authorization: Bearer <token>)",
                                  "reason": "unauthenticated", "code": 401}
        assert missing.headers["www-authenticate"] == 'Bearer realm="image-classifier"'
        wrong = requests.request(method, url + path, headers=bearer("ts-token"), timeout=30, **kw)
        assert wrong.status_code == 401 and wrong.json()["error"] == "the bearer token is not accepted"
        assert wrong.headers["www-authenticate"] == 'Bearer realm="image-classifier", error="invalid_token"'
        own = requests.request(method, direct + path, timeout=30, **kw)
        for token in (GOOD, OTHER):
            proxied = requests.request(method, url + path, headers=bearer(token), timeout=30, **kw)
            assert (proxied.status_code, proxied.content) == (own.status_code, own.content), path
            assert proxied.headers.get("content-type") == own.headers.get("content-type"), path
    assert requests.post(url + f"/predictions/{MODEL_NAME}", data=images[0], headers=bearer(GOOD),
                         timeout=30).json() == requests.post(direct + f"/predictions/{MODEL_NAME}", data=images[0],
                                                             timeout=30).json()


def test_probes_metrics_and_preflights_need_no_token(guarded, direct):
    url = guarded.settings.inference_url
    assert requests.get(url + "/ping", timeout=10).json() == {"status": "Healthy"}
    for path in ("/v2/health/live", "/v2/health/ready"):  # TorchServe's own answer (404 unless OIP is on)
        proxied, own = requests.get(url + path, timeout=10), requests.get(direct + path, timeout=10)
        assert proxied.status_code != 401 and (proxied.status_code, proxied.content) == (own.status_code, own.content)
    assert requests.get(guarded.settings.metrics_url, timeout=10).status_code == 200
    origin = guarded.settings.allowed_origin
    preflight = requests.options(f"{url}/predictions/{MODEL_NAME}", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # the page reads a refusal's status only when the refusal allows its origin
    refused = requests.post(f"{url}/predictions/{MODEL_NAME}", data=b"x", headers={"Origin": origin}, timeout=10)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
    other = requests.post(f"{url}/predictions/{MODEL_NAME}", data=b"x", headers={"Origin": "http://evil.test"}, timeout=10)
    assert other.status_code == 401 and "access-control-allow-origin" not in other.headers


def test_the_public_ports_are_the_proxy_and_torchserve_listens_on_loopback_only(guarded):
    s = guarded.settings
    env = guarded.env()
    assert env["TS_INFERENCE_ADDRESS"] == f"http://127.0.0.1:{s.inference_upstream_port}"
    assert (env["TS_GRPC_INFERENCE_ADDRESS"], env["TS_GRPC_INFERENCE_PORT"]) == ("127.0.0.1", str(s.grpc_inference_upstream_port))
    command = guarded.command()
    assert command[command.index("--inference-listen") + 1] == f"{s.host}:{s.inference_port}"
    assert command[command.index("--grpc-listen") + 1] == f"{s.host}:{s.grpc_inference_port}"


def test_a_body_over_the_limit_is_refused_before_torchserve(guarded, images):
    url = f"{guarded.settings.inference_url}/predictions/{MODEL_NAME}"
    limit = int(next(line.split("=", 1)[1] for line in guarded.config.read_text().splitlines()
                     if line.startswith("max_request_size=")))
    r = requests.post(url, data=b"\0" * (limit + 1), headers=bearer(GOOD), timeout=30)
    assert r.status_code == 413 and r.json()["reason"] == "request_too_large" and str(limit) in r.json()["error"]

    def chunked():  # no Content-Length: counted while it arrives
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536
    r = requests.post(url, data=chunked(), headers=bearer(GOOD), timeout=30)
    assert r.status_code == 413 and r.json()["reason"] == "request_too_large"
    assert requests.post(url, data=images[0], headers=bearer(GOOD), timeout=30).status_code == 200


def test_a_stalled_upload_is_answered_408_and_holds_nothing(guarded, images):
    s = guarded.settings
    with stalled_upload(s) as sock:
        started = time.monotonic()
        answer = sock.recv(65536).decode(errors="replace")
        waited = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408") and '"reason": "request_timeout"' in answer, answer
    assert BODY_TIMEOUT_S - 0.5 <= waited < BODY_TIMEOUT_S + 5
    r = requests.post(f"{s.inference_url}/predictions/{MODEL_NAME}", data=images[0], headers=bearer(GOOD), timeout=30)
    assert r.status_code == 200


def stalled_upload(s, token: str = GOOD) -> socket.socket:
    """A request whose body never arrives whole: it holds its place in the proxy until the body timeout."""
    sock = socket.create_connection((s.host, s.inference_port), timeout=BODY_TIMEOUT_S + 10)
    sock.sendall(f"POST /predictions/{MODEL_NAME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Length: 100000\r\n\r\n".encode() + b"\0" * 100)
    return sock


def test_requests_beyond_the_in_flight_bound_get_503_not_memory(guarded, images):
    """The proxy reads each body whole before TorchServe: at most MAX_INFLIGHT at once."""
    s = guarded.settings
    url = f"{s.inference_url}/predictions/{MODEL_NAME}"
    held = [stalled_upload(s) for _ in range(MAX_INFLIGHT)]
    try:
        time.sleep(0.5)  # all of them inside the proxy
        r = requests.post(url, data=images[0], headers=bearer(GOOD), timeout=30)
        assert r.status_code == 503 and r.json()["reason"] == "overloaded" and r.headers["retry-after"] == "1"
        assert requests.get(f"{s.inference_url}/ping", timeout=10).status_code == 200  # probes hold nothing: never refused
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + BODY_TIMEOUT_S + 5
    while (r := requests.post(url, data=images[0], headers=bearer(GOOD), timeout=30)).status_code == 503:
        assert time.monotonic() < deadline, "the places of closed uploads were never given back"
        time.sleep(0.2)
    assert r.status_code == 200


def test_expect_100_continue_is_answered_only_for_an_authenticated_caller(guarded, images):
    """curl sends `Expect: 100-continue` above 1 KiB and waits for it before the body."""
    s = guarded.settings

    def head(token: str | None) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return (f"POST /predictions/{MODEL_NAME} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: image/png\r\n"
                f"Content-Length: {len(images[0])}\r\nExpect: 100-continue\r\n\r\n").encode()

    with socket.create_connection((s.host, s.inference_port), timeout=5) as sock:
        sock.sendall(head(None))
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")  # at once, no 100: the body is never asked for
    with socket.create_connection((s.host, s.inference_port), timeout=5) as sock:
        sock.sendall(head(GOOD))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(images[0])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'"' in answer.split(b"\r\n\r\n", 1)[1]


def grpc_calls(stubs, image: bytes):
    inf, oip = stubs.inference_pb2, stubs.open_inference_grpc_pb2
    return [("InferenceAPIsService", "Predictions", inf.PredictionsRequest(model_name=MODEL_NAME, input={"data": image})),
            ("InferenceAPIsService", "Predictions", inf.PredictionsRequest(model_name="no-such-model", input={"data": image})),
            ("GRPCInferenceService", "ModelMetadata", oip.ModelMetadataRequest(name=MODEL_NAME)),
            ("GRPCInferenceService", "ServerMetadata", oip.ServerMetadataRequest())]


def outcome(call, request, metadata=()):
    try:
        return "OK", call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as e:
        return e.code().name, e.details()


def test_grpc_refuses_a_missing_or_wrong_token_and_answers_as_torchserve(guarded, images):
    stubs = grpc_stubs.load()
    s = guarded.settings
    with grpc.insecure_channel(f"{s.host}:{s.grpc_inference_port}") as public, \
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_inference_upstream_port}") as own:
        services = {"InferenceAPIsService": stubs.inference_pb2_grpc.InferenceAPIsServiceStub,
                    "GRPCInferenceService": stubs.open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub}
        for service, method, request in grpc_calls(stubs, images[0]):
            proxied, torchserve = (getattr(services[service](c), method) for c in (public, own))
            for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", GOOD),)):
                code, details = outcome(proxied, request, metadata)
                assert code == "UNAUTHENTICATED", (method, metadata)
                assert details == ("a bearer token is required (metadata authorization: Bearer <token>)" if not metadata
                                   else "the bearer token is not accepted")
            for token in (GOOD, OTHER):
                assert outcome(proxied, request, (("authorization", f"Bearer {token}"),)) == outcome(torchserve, request), method
        # streamed: refused (TorchServe itself would lose the worker to our non-streaming handler)
        restarts = guarded.worker_restarts()
        request = stubs.inference_pb2.PredictionsRequest(model_name=MODEL_NAME, input={"data": images[0]})
        for stream in (services["InferenceAPIsService"](public).StreamPredictions,
                       lambda r, **kw: services["InferenceAPIsService"](public).StreamPredictions2(iter([r]), **kw)):
            for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                                   ((("authorization", f"Bearer {GOOD}"),), grpc.StatusCode.UNIMPLEMENTED)):
                with pytest.raises(grpc.RpcError) as e:
                    list(stream(request, metadata=metadata, timeout=30))
                assert e.value.code() == code
        assert "call Predictions" in e.value.details() and guarded.worker_restarts() == restarts
        # the probes: open
        assert services["InferenceAPIsService"](public).Ping(empty_pb2.Empty(), timeout=10).health
        oip = stubs.open_inference_grpc_pb2
        for method, request in (("ServerLive", oip.ServerLiveRequest()), ("ServerReady", oip.ServerReadyRequest()),
                                ("ModelReady", oip.ModelReadyRequest(name=MODEL_NAME))):
            proxied, torchserve = (getattr(services["GRPCInferenceService"](c), method) for c in (public, own))
            # TorchServe's own answer (UNIMPLEMENTED unless its OIP service is on), never a token refusal
            assert outcome(proxied, request) == outcome(torchserve, request) and outcome(proxied, request)[0] != "UNAUTHENTICATED"


def test_grpc_calls_beyond_the_in_flight_bound_get_resource_exhausted(guarded, chelsea):
    """40 calls at once to the ImageNet model (tens of ms each, one worker): the proxy holds
    MAX_INFLIGHT of them and refuses the rest at once; every other call is answered."""
    stubs = grpc_stubs.load()
    s = guarded.settings
    request = stubs.inference_pb2.PredictionsRequest(model_name=IMAGENET_NAME, input={"data": chelsea})
    with grpc.insecure_channel(f"{s.host}:{s.grpc_inference_port}") as channel:
        predictions = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions
        with ThreadPoolExecutor(40) as pool:
            codes = Counter(pool.map(lambda _: outcome(predictions, request, (("authorization", f"Bearer {GOOD}"),))[0],
                                     range(40)))
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes["OK"] >= MAX_INFLIGHT, codes


def test_a_rotated_token_file_takes_effect_without_a_restart(guarded, token_file, images):
    url = f"{guarded.settings.inference_url}/predictions/{MODEL_NAME}"
    pid = guarded.proc.pid
    new = token_file.with_name("tokens.rotated")
    new.write_text("ts-token-rotated-19aa\n")
    os.replace(new, token_file)  # as the kubelet swaps a Secret's files
    try:
        assert requests.post(url, data=images[0], headers=bearer(GOOD), timeout=30).status_code == 401
        assert requests.post(url, data=images[0], headers=bearer("ts-token-rotated-19aa"), timeout=30).status_code == 200
    finally:
        token_file.write_text(f"{GOOD}\n{OTHER}\n")
    assert guarded.proc.pid == pid and guarded.proc.poll() is None


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_the_client_cli_sends_its_token(guarded, samples, protocol, capsys, monkeypatch):
    from scripts.client import predict

    out_dir, listed = samples
    image = str(out_dir / listed[0]["file"])
    s = guarded.settings
    where = ["--url", s.inference_url, "--grpc-target", f"{s.host}:{s.grpc_inference_port}", "--protocol", protocol]
    monkeypatch.delenv("SERVE_TOKEN", raising=False)
    assert predict.main([image, *where]) == 1
    assert ("HTTP 401" if protocol == "rest" else "gRPC UNAUTHENTICATED") in capsys.readouterr().err
    assert predict.main([image, *where, "--token", GOOD]) == 0
    assert capsys.readouterr().out.startswith(f"{image}:\n")

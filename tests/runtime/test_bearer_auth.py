"""Bearer-token authentication on a real KServe-native runtime (SERVE_TOKEN_FILE): every inference
and metadata route, REST and gRPC, refuses a missing and a wrong token and serves a good one; the
probes and /metrics need none; a rewritten token file takes effect without a restart."""
from __future__ import annotations

import base64
import os

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from handlers.auth import bearer
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from tests.helpers import MODEL_NAME

pytestmark = pytest.mark.integration

GOOD, OTHER = "token-one-7f3a", "token-two-91bc"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("secret") / "tokens"
    f.write_text(f"{GOOD}\n{OTHER}\n")
    return f


@pytest.fixture(scope="module")
def guarded(store, token_file, tmp_path_factory):
    rt = KServeRuntime(store / "model-store", tmp_path_factory.mktemp("kserve-auth"), *free_ports(2),
                       extra_env={"SERVE_TOKEN_FILE": str(token_file)})
    # the fixture's own readiness check uses the open probes: it must start without a token
    rt.start()
    yield rt
    rt.stop()


def routes(rt: KServeRuntime, image: bytes) -> list[tuple[str, str, dict]]:
    b64 = base64.b64encode(image).decode()
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}
    return [("POST", f"/v1/models/{MODEL_NAME}:predict", {"json": {"instances": [{"b64": b64}]}}),
            ("POST", f"/v2/models/{MODEL_NAME}/infer", {"json": v2}),
            ("GET", f"/v2/models/{MODEL_NAME}", {}),
            ("GET", "/v2", {}),
            ("GET", "/v1/models", {})]


def test_every_rest_route_refuses_a_missing_or_wrong_token_and_serves_a_good_one(guarded, images):
    for method, path, kw in routes(guarded, images[0]):
        url = guarded.url + path
        missing = requests.request(method, url, timeout=30, **kw)
        assert missing.status_code == 401, path
        assert missing.json() == {"error": "a bearer token is required (Authorization: Bearer <token>)",
                                  "reason": "unauthenticated", "code": 401}
        assert missing.headers["www-authenticate"] == 'Bearer realm="image-classifier"'
        wrong = requests.request(method, url, headers=bearer("token-one"), timeout=30, **kw)
        assert wrong.status_code == 401 and wrong.json()["error"] == "the bearer token is not accepted"
        assert wrong.headers["www-authenticate"] == 'Bearer realm="image-classifier", error="invalid_token"'
        for token in (GOOD, OTHER):
            assert requests.request(method, url, headers=bearer(token), timeout=30, **kw).status_code == 200, path


def test_probes_and_metrics_need_no_token(guarded):
    for path in ("/", "/v2/health/live", "/v2/health/ready"):
        assert requests.get(guarded.url + path, timeout=10).status_code == 200, path
    metrics = requests.get(guarded.metrics_url, timeout=10)  # its own port, which the NetworkPolicy guards
    assert metrics.status_code == 200 and "image_classifier_queue_depth" in metrics.text


def test_metrics_are_not_served_beside_the_inference_api(guarded):
    """kserve registers /metrics on the HTTP port; here it says where the metrics are instead."""
    r = requests.get(guarded.url + "/metrics", headers=bearer(GOOD), timeout=10)
    assert r.status_code == 404 and r.json()["reason"] == "not_served_here" and "--metrics-port" in r.json()["error"]
    assert requests.get(guarded.url + "/metrics", timeout=10).status_code == 401  # not an open path any more


def infer_request(image: bytes) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])])
    r.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
    return r


def test_grpc_refuses_a_missing_or_wrong_token_and_serves_a_good_one(guarded, images):
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        calls = [(stub.ModelInfer, infer_request(images[0])), (stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL_NAME)),
                 (stub.ServerMetadata, pb.ServerMetadataRequest())]
        for call, request in calls:
            for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", GOOD),)):
                with pytest.raises(grpc.RpcError) as e:
                    call(request, metadata=metadata, timeout=30)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert call(request, metadata=(("authorization", f"Bearer {OTHER}"),), timeout=30) is not None
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready  # probes: open
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), timeout=10).ready


def test_a_rotated_token_file_takes_effect_without_a_restart(guarded, token_file, images):
    url = f"{guarded.url}/v1/models/{MODEL_NAME}:predict"
    body = {"instances": [{"b64": base64.b64encode(images[0]).decode()}]}
    pid = guarded.proc.pid
    new = token_file.with_name("tokens.rotated")
    new.write_text("token-three-0d2e\n")
    os.replace(new, token_file)  # as the kubelet swaps a Secret's files
    try:
        assert requests.post(url, json=body, headers=bearer(GOOD), timeout=30).status_code == 401
        assert requests.post(url, json=body, headers=bearer("token-three-0d2e"), timeout=30).status_code == 200
    finally:
        token_file.write_text(f"{GOOD}\n{OTHER}\n")
    assert guarded.proc.pid == pid and guarded.proc.poll() is None


@pytest.mark.parametrize("protocol", ["v1", "v2", "oip"])
def test_the_client_cli_sends_its_token(guarded, samples, protocol, capsys, monkeypatch):
    from scripts.client import predict

    out_dir, listed = samples
    image = str(out_dir / listed[0]["file"])
    where = ["--url", guarded.url, "--grpc-target", guarded.grpc_target, "--protocol", protocol]
    monkeypatch.delenv("SERVE_TOKEN", raising=False)
    assert predict.main([image, *where]) == 1
    assert ("HTTP 401" if protocol != "oip" else "gRPC UNAUTHENTICATED") in capsys.readouterr().err
    assert predict.main([image, *where, "--token", GOOD]) == 0
    assert capsys.readouterr().out.startswith(f"{image}:\n")
    monkeypatch.setenv("SERVE_TOKEN", OTHER)  # the environment, when no --token is given
    assert predict.main([image, *where]) == 0

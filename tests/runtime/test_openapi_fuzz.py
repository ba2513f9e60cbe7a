"""schemathesis against the KServe-native runtime's own OpenAPI document (/openapi.json, which
kserve serves), bounded in examples and with a fixed seed: no generated request may get a 5xx.
It found, and these now answer 4xx: a model version asked for on OIP's versioned routes (kserve:
501 for any version; now the model's own version is served and another one gets 404), and loading
an unknown model through the repository extension (kserve: 503; now 404). It also showed that
kserve would let any caller unload a model for good: unloading is refused (403). gRPC, which kserve
lets serve any version asked for, refuses another version too (NOT_FOUND)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.helpers import MODEL_NAME

pytestmark = pytest.mark.integration


def test_no_generated_request_gets_a_server_error(runtime, tmp_path):
    st = Path(sys.executable).parent / "st"
    proc = subprocess.run([str(st), "run", f"{runtime.url}/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "40", "--seed", "1", "--workers", "1", "--no-color"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    assert requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}/ready", timeout=10).status_code == 200  # still served


def test_versioned_routes_serve_the_models_version_and_404_another(runtime):
    version = requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}", timeout=10).json()["versions"][0]
    assert requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}/versions/{version}/ready", timeout=10).json() == \
        {"name": MODEL_NAME, "ready": True}
    assert requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}?model_version={version}", timeout=10).status_code == 200
    for url in (f"/v2/models/{MODEL_NAME}/versions/9.9/ready", f"/v2/models/{MODEL_NAME}?model_version=9.9",
                "/v2/models/nope/versions/1.0"):
        r = requests.get(runtime.url + url, timeout=10)
        assert r.status_code == 404 and r.json()["reason"] == "model_not_found", url
    assert "has no version '9.9' (it serves version" in requests.get(
        f"{runtime.url}/v2/models/{MODEL_NAME}/versions/9.9", timeout=10).json()["error"]


def test_the_repository_extension_cannot_unload_a_model(runtime):
    base = f"{runtime.url}/v2/repository/models"
    assert requests.post(f"{base}/nope/load", timeout=10).status_code == 404
    assert requests.post(f"{base}/{MODEL_NAME}/load", timeout=10).json() == {"name": MODEL_NAME, "load": True}
    refused = requests.post(f"{base}/{MODEL_NAME}/unload", timeout=10)
    assert refused.status_code == 403 and refused.json()["reason"] == "not_allowed"
    assert requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}/ready", timeout=10).status_code == 200


def test_grpc_serves_the_models_version_and_refuses_another(runtime, images):
    version = requests.get(f"{runtime.url}/v2/models/{MODEL_NAME}", timeout=10).json()["versions"][0]
    infer = pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])])
    infer.raw_input_contents.append(len(images[0]).to_bytes(4, "little") + images[0])
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        infer.model_version = version
        assert stub.ModelInfer(infer, timeout=30).model_name == MODEL_NAME
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME, version=version), timeout=10).ready
        infer.model_version = "9.9"
        for call, request in ((stub.ModelInfer, infer), (stub.ModelReady, pb.ModelReadyRequest(name=MODEL_NAME, version="9.9")),
                              (stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL_NAME, version="9.9"))):
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "has no version '9.9'" in e.value.details()

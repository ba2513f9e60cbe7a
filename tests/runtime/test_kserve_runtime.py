"""The KServe-native runtime (scripts/runtime/) as a real subprocess on free loopback ports
over the session's two real `.mar` files: KServe v1 REST, OIP v2 REST and v2 gRPC through kserve's
own SDK clients and plain requests, OIP health and metadata, bad inputs, /metrics, and parity with
the in-process ImageClassifier and a real TorchServe serving the same archives."""
from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import requests
from kserve import (InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig,
                    model_server)
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from PIL import Image

from handlers.limits import DEFAULT_MAX_IMAGES
from scripts.runtime import decode, kserve_adapter, server
from handlers.settings import ServingSettings
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from tests.helpers import IMAGENET_NAME, MODEL_NAME, assert_same_topk, png_bytes

REPO = Path(__file__).resolve().parents[2]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro):
    return asyncio.run(coro)


def v1(base: str, model: str = MODEL_NAME) -> str:
    return f"{base}/v1/models/{model}:predict"


def v2(base: str, model: str = MODEL_NAME) -> str:
    return f"{base}/v2/models/{model}/infer"


def v2_body(data: list, shape=None, datatype="BYTES", **extra) -> dict:
    return {"inputs": [{"name": "image", "datatype": datatype, "shape": shape or [len(data)], "data": data}],
            **extra}


def v2_topk(out: dict | object) -> list[dict]:
    """Per image {label: probability} from a v2 body (dict) or an SDK InferResponse."""
    outputs = out["outputs"] if isinstance(out, dict) else [  # as_numpy: JSON data or raw contents alike
        {"name": o.name, "shape": o.shape, "data": o.as_numpy().reshape(-1).tolist()} for o in out.outputs]
    labels, probs = (next(o for o in outputs if o["name"] == name) for name in ("labels", "probabilities"))
    n, k = labels["shape"]
    assert probs["shape"] == [n, k]
    names = [x.decode() if isinstance(x, bytes) else x for x in labels["data"]]
    return [dict(zip(names[i * k:(i + 1) * k], probs["data"][i * k:(i + 1) * k])) for i in range(n)]


def without_kserve_nulls(body: dict) -> dict:
    """kserve's v2 response model adds the optional OIP "parameters" as null (top level and per
    output); TorchServe leaves them out. Nothing else may differ."""
    body = {k: v for k, v in body.items() if not (k == "parameters" and v is None)}
    if "outputs" in body:
        body["outputs"] = [{k: v for k, v in o.items() if not (k == "parameters" and v is None)}
                           for o in body["outputs"]]
    return body


# --- command line, without a server --------------------------------------------------------------

def test_our_flags_and_kserves_are_one_parser():
    """kserve's parser is the parent of ours: its flags parse beside ours, and its --http_port and
    our --http-port set the same port."""
    argv = ["--model-store", "/m", "--host", "0.0.0.0", "--http-port", "9001", "--grpc-port", "9002",
            "--enable_docs_url", "true"]
    args = server.get_args_parser(ServingSettings()).parse_args(argv)
    assert (args.model_store, args.host, args.http_port, args.grpc_port) == (Path("/m"), "0.0.0.0", 9001, 9002)
    assert args.enable_docs_url is True
    kserve_spelling = server.get_args_parser(ServingSettings()).parse_args(
        ["--model-store", "/m", "--http_port", "9003", "--grpc_port", "9004"])
    assert (kserve_spelling.http_port, kserve_spelling.grpc_port) == (9003, 9004)
    theirs, _ = model_server.parser.parse_known_args(argv)  # what kserve reads at import time
    assert (theirs.http_port, theirs.grpc_port, theirs.enable_docs_url) == (8080, 8081, True)


def test_defaults_come_from_the_serving_settings():
    s = ServingSettings.from_env({"SERVE_KSERVE_HTTP_PORT": "9101", "SERVE_KSERVE_GRPC_PORT": "9102",
                                  "SERVE_KSERVE_METRICS_PORT": "9103"})
    args = server.get_args_parser(s).parse_args(["--model-store", "m"])
    assert (args.host, args.http_port, args.grpc_port, args.metrics_port) == ("127.0.0.1", 9101, 9102, 9103)
    d = ServingSettings()
    assert (d.kserve_http_port, d.kserve_grpc_port, d.kserve_metrics_port) == (8085, 8086, 8087)


def test_an_empty_store_or_a_broken_archive_fails_fast(tmp_path, capsys):
    assert server.main(["--model-store", str(tmp_path)]) == 2
    assert "no .mar files" in capsys.readouterr().err
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    assert server.main(["--model-store", str(tmp_path)]) == 2
    assert "broken.mar: BadZipFile" in capsys.readouterr().err


def test_an_unknown_flag_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        server.main(["--model-store", str(tmp_path), "--http_prot", "1"])
    assert e.value.code == 2


def test_kserve_flags_this_runtime_would_ignore_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        server.main(["--model-store", str(tmp_path), "--workers", "2"])
    assert e.value.code == 2 and "--workers: not used by this runtime" in capsys.readouterr().err


def test_grpc_raw_elements_follow_the_same_envelope_rules_as_rest():
    png = png_bytes(Image.new("L", (4, 4)))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="img", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=[png, b"x"]))
    grpc_req = InferRequest.from_grpc(pb.ModelInferRequest(
        model_name="m", id="r", inputs=[tensor], parameters={"topk": pb.InferParameter(int64_param=2)}))
    parsed = decode.parse_oip(grpc_req, max_bytes=1 << 20)
    assert (parsed.error, parsed.images, parsed.topk, parsed.request_id, parsed.input_name) == (
        None, [png, b"x"], 2, "r", "img")
    mismatch = InferRequest.from_grpc(pb.ModelInferRequest(model_name="m", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[3],
                                              contents=pb.InferTensorContents(bytes_contents=[png]))]))
    got = decode.parse_oip(mismatch, max_bytes=1 << 20).error
    assert (got.status, str(got)) == (400, 'input "image": shape [3] does not match 1 data elements (expected [1])')


# --- the running runtime: binding, health, metadata ------------------------------------------

def listening_addresses(port: int) -> set[str]:
    """Local addresses (kernel hex) of LISTEN sockets on `port`, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_every_listener_binds_only_the_given_host(runtime):
    # 127.0.0.1 as the kernel writes it: plain IPv4 (uvicorn, the metrics server), IPv4-mapped IPv6 (gRPC's socket)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    for port in (runtime.http_port, runtime.grpc_port, runtime.metrics_port):
        assert listening_addresses(port) and listening_addresses(port) <= loopback, port


@pytest.mark.integration
def test_rest_health_and_metadata(runtime):
    get = lambda path: requests.get(runtime.url + path, timeout=10)  # noqa: E731
    assert get("/v2/health/live").json() == {"live": True}
    assert get("/v2/health/ready").json() == {"ready": True}
    assert get("/v2").json()["name"] == "kserve"
    assert sorted(get("/v2/models").json()["models"]) == sorted([IMAGENET_NAME, MODEL_NAME])
    assert sorted(get("/v1/models").json()["models"]) == sorted([IMAGENET_NAME, MODEL_NAME])
    for name in (MODEL_NAME, IMAGENET_NAME):
        assert get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
        assert get(f"/v1/models/{name}").json() == {"name": name, "ready": True}
        assert get(f"/v2/models/{name}").json() == {
            "name": name, "versions": ["1.0"], "platform": "pytorch",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]}
    assert get("/v2/models/nope").status_code == 404
    assert get("/v2/models/nope/ready").status_code == 404


@pytest.mark.integration
def test_grpc_health_and_metadata(runtime):
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == "kserve"
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME), timeout=10)
        assert (meta.name, meta.platform) == (MODEL_NAME, "pytorch")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "BYTES", [-1])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("labels", "BYTES", [-1, -1]), ("probabilities", "FP32", [-1, -1])]
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

    async def sdk():
        async with InferenceGRPCClient(runtime.grpc_target, retries=0) as client:
            return (await client.is_server_live(), await client.is_server_ready(),
                    await client.is_model_ready(MODEL_NAME), await client.is_model_ready(IMAGENET_NAME))
    assert run(sdk()) == (True, True, True, True)


@pytest.mark.integration
def test_rest_sdk_health(runtime):
    async def sdk():
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            return (await client.is_server_live(runtime.url), await client.is_server_ready(runtime.url),
                    await client.is_model_ready(runtime.url, MODEL_NAME),
                    await client.is_model_ready(runtime.url, "nope"))
    assert run(sdk()) == (True, True, True, False)


# --- inference through each protocol ---------------------------------------------------------

@pytest.mark.integration
def test_v1_rest_with_requests_and_the_sdk(runtime, images, local):
    expected = local[MODEL_NAME].predict(images, 3)
    body = {"instances": [{"b64": b64(png)} for png in images[:-1]] + [b64(images[-1])],
            "parameters": {"topk": 3}}
    r = requests.post(v1(runtime.url), json=body, timeout=60)
    assert r.status_code == 200 and r.headers["x-model-version"] == "1.0"
    out = r.json()
    assert (out["model_name"], out["model_version"]) == (MODEL_NAME, "1.0")
    for got, want in zip(out["predictions"], expected, strict=True):
        assert_same_topk(got, want)

    async def sdk():
        async with InferenceRESTClient(RESTConfig(protocol="v1", retries=0)) as client:
            return await client.infer(runtime.url, body, model_name=MODEL_NAME)
    assert run(sdk()) == out


@pytest.mark.integration
def test_v2_rest_with_requests_and_the_sdk(runtime, images, local):
    expected = local[MODEL_NAME].predict(images)
    r = requests.post(v2(runtime.url), json=v2_body([b64(png) for png in images], id="req-1"), timeout=60)
    assert r.status_code == 200 and r.headers["x-model-version"] == "1.0"
    out = r.json()
    assert (out["id"], out["model_name"], out["model_version"]) == ("req-1", MODEL_NAME, "1.0")
    assert [(o["name"], o["datatype"], o["shape"]) for o in out["outputs"]] == [
        ("labels", "BYTES", [len(images), 5]), ("probabilities", "FP32", [len(images), 5])]
    for got, want in zip(v2_topk(out), expected, strict=True):
        assert_same_topk(got, want)

    async def sdk():
        tensor = InferInput("image", [2], "BYTES", data=[b64(png) for png in images[:2]])
        request = InferRequest(MODEL_NAME, [tensor], request_id="sdk-1", parameters={"topk": 2})
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            return await client.infer(runtime.url, request, model_name=MODEL_NAME)
    response = run(sdk())
    assert (response.id, response.model_name) == ("sdk-1", MODEL_NAME)
    for got, want in zip(v2_topk(response), local[MODEL_NAME].predict(images[:2], 2), strict=True):
        assert_same_topk(got, want)


@pytest.mark.integration
def test_v2_grpc_with_the_sdk_raw_bytes_as_contents_and_as_raw_input(runtime, images, local):
    expected = local[MODEL_NAME].predict(images, 3)

    async def sdk():
        as_contents = InferInput("image", [len(images)], "BYTES", data=list(images))
        as_raw = InferInput("image", [len(images)], "BYTES")
        as_raw.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        async with InferenceGRPCClient(runtime.grpc_target, retries=0) as client:
            return [await client.infer(InferRequest(MODEL_NAME, [tensor], request_id=f"g-{i}",
                                                    parameters={"topk": 3}))
                    for i, tensor in enumerate((as_contents, as_raw))]
    for i, response in enumerate(run(sdk())):
        assert (response.id, response.model_name, response.model_version) == (f"g-{i}", MODEL_NAME, "1.0")
        assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
            ("labels", "BYTES", [len(images), 3]), ("probabilities", "FP32", [len(images), 3])]
        for got, want in zip(v2_topk(response), expected, strict=True):
            assert_same_topk(got, want)  # FP32 on the wire: well inside the tolerance


@pytest.mark.integration
@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_native_raw_body_on_the_v1_route_like_torchserve(runtime, images, local, content_type):
    """kserve itself reads application/octet-stream as JSON; a raw image sent with it (what
    TorchServe's native clients send) is answered as TorchServe answers it."""
    r = requests.post(v1(runtime.url), data=images[0], headers={"Content-Type": content_type, "X-TopK": "2"},
                      timeout=30)
    assert r.status_code == 200, r.text
    assert_same_topk(r.json(), local[MODEL_NAME].predict([images[0]], 2)[0])
    # JSON sent as octet-stream is still read as JSON
    body = {"instances": [{"b64": b64(images[0])}]}
    r = requests.post(v1(runtime.url), data=json.dumps(body), headers={"Content-Type": "application/octet-stream"},
                      timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


@pytest.mark.integration
def test_imagenet_sees_a_cat_in_chelsea(runtime, chelsea, local):
    r = requests.post(v1(runtime.url, IMAGENET_NAME), json={"instances": [{"b64": b64(chelsea)}]}, timeout=60)
    assert r.status_code == 200
    (top,) = r.json()["predictions"]
    assert next(iter(top)) in CATS, top
    assert_same_topk(top, local[IMAGENET_NAME].predict([chelsea])[0])

    async def over_grpc():
        async with InferenceGRPCClient(runtime.grpc_target, retries=0) as client:
            tensor = InferInput("image", [1], "BYTES", data=[chelsea])
            return await client.infer(InferRequest(IMAGENET_NAME, [tensor]))
    (grpc_top,) = v2_topk(run(over_grpc()))
    assert_same_topk(grpc_top, top)


@pytest.mark.integration
def test_grpc_outputs_are_raw_unless_a_request_asks_for_typed_contents(runtime, images, local):
    """Raw output contents by default (Triton's form); binary_data_output=false asks for typed
    contents, for clients that read only those; a requested output narrows the answer."""
    def infer(**request) -> pb.ModelInferResponse:
        tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1],
                                                       contents=pb.InferTensorContents(bytes_contents=[images[0]]))
        with grpc.insecure_channel(runtime.grpc_target) as channel:
            return GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], **request), timeout=30)
    want = local[MODEL_NAME].predict(images[:1])[0]
    raw = infer()
    assert len(raw.raw_output_contents) == 2 and not raw.outputs[0].contents.bytes_contents
    assert_same_topk(v2_topk(InferResponse.from_grpc(raw))[0], want)
    typed = infer(parameters={"binary_data_output": pb.InferParameter(bool_param=False)})
    assert not typed.raw_output_contents
    labels, probs = typed.outputs
    assert_same_topk(dict(zip((x.decode() for x in labels.contents.bytes_contents), probs.contents.fp32_contents)), want)
    one = infer(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")])
    assert [o.name for o in one.outputs] == ["probabilities"] and len(one.raw_output_contents) == 1


@pytest.mark.integration
def test_concurrent_requests_over_every_protocol(runtime, images, local):
    expected = local[MODEL_NAME].predict(images[:2])

    def rest_v1(i):
        r = requests.post(v1(runtime.url), json={"instances": [b64(images[i % 2])]}, timeout=60)
        return r.json()["predictions"][0]

    def rest_v2(i):
        return v2_topk(requests.post(v2(runtime.url), json=v2_body([b64(images[i % 2])]), timeout=60).json())[0]

    def grpc_v2(i):
        with grpc.insecure_channel(runtime.grpc_target) as channel:
            reply = GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(
                model_name=MODEL_NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="image", datatype="BYTES", shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[images[i % 2]]))]), timeout=60)
        return v2_topk(InferResponse.from_grpc(reply))[0]  # outputs in raw_output_contents

    calls = [(f, i) for i in range(4) for f in (rest_v1, rest_v2, grpc_v2)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda c: c[0](c[1]), calls))
    for (_, i), got in zip(calls, results):
        assert_same_topk(got, expected[i % 2])


@pytest.mark.integration
def test_metrics_endpoint_counts_requests_per_model(runtime, images):
    requests.post(v1(runtime.url), json={"instances": [b64(images[0])]}, timeout=30).raise_for_status()
    r = requests.get(runtime.metrics_url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    counts = [float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
              if line.startswith(f'request_predict_seconds_count{{model_name="{MODEL_NAME}"}}')]
    assert counts and counts[0] >= 1


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("route, body, status, reason, says", [
    ("v1", {"instances": [b64(b"junk")]}, 400, "invalid_image", "instances[0]: body is not an image"),
    ("v1", {"instances": ["@@"]}, 400, "invalid_base64", "not valid base64"),
    ("v1", {"instances": "not a list"}, 400, "malformed_request", '"instances" must be'),
    ("v1", {"instances": ["AA=="], "parameters": {"topk": 0}}, 400, "invalid_option", "topk must be"),
    ("v2", v2_body([1.0], datatype="FP32"), 400, "malformed_request", "must have datatype BYTES"),
    ("v2", v2_body(["AA=="], shape=[2]), 400, "malformed_request", "shape [2] does not match"),
    ("v2", v2_body([b64(b"junk")]), 400, "invalid_image", "image[0]: body is not an image"),
    ("v2", v2_body(["@@"]), 400, "invalid_base64", "image[0]: not valid base64"),
    ("v2", v2_body(["AA=="] * (DEFAULT_MAX_IMAGES + 1)), 400, "malformed_request", "at most"),
    ("v2", {"inputs": [{"name": "image", "datatype": "BYTES", "data": ["AA=="]}]}, 400, "malformed_request",
     "inputs[0].shape: Field required"),
])
def test_bad_rest_input_gets_a_named_4xx(runtime, route, body, status, reason, says):
    r = requests.post(v1(runtime.url) if route == "v1" else v2(runtime.url), json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    out = r.json()
    assert (out["reason"], out["code"]) == (reason, status) and says in out["error"], out


@pytest.mark.integration
def test_bodies_that_are_not_json_or_too_large(runtime, local):
    for url in (v1(runtime.url), v2(runtime.url)):
        r = requests.post(url, data=b'{"inputs": ', headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400 and r.json()["reason"] == "malformed_request", r.text
    too_big = "A" * ((local[MODEL_NAME].max_bytes * 4 // 3) // 4 + 1024) * 4
    for url, body in ((v1(runtime.url), {"instances": [too_big]}), (v2(runtime.url), v2_body([too_big]))):
        r = requests.post(url, json=body, timeout=60)
        assert r.status_code == 413 and r.json()["reason"] == "image_too_large", r.text[:300]


@pytest.mark.integration
def test_a_bad_instance_in_v1_is_an_error_object_in_its_slot(runtime, images, local):
    r = requests.post(v1(runtime.url), json={"instances": [b64(images[0]), b64(b"junk")]}, timeout=30)
    assert r.status_code == 200
    good, bad = r.json()["predictions"]
    assert_same_topk(good, local[MODEL_NAME].predict([images[0]])[0])
    assert bad["reason"] == "invalid_image" and bad["error"].startswith("instances[1]:")


@pytest.mark.integration
def test_the_rest_sdk_surfaces_our_message(runtime):
    async def sdk():
        request = InferRequest(MODEL_NAME, [InferInput("image", [1], "BYTES", data=["@@"])])
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            return await client.infer(runtime.url, request, model_name=MODEL_NAME)
    with pytest.raises(httpx.HTTPStatusError) as e:
        run(sdk())
    assert e.value.response.status_code == 400 and "image[0]: not valid base64" in str(e.value)


@pytest.mark.integration
def test_the_sdks_binary_tensor_extension_carries_raw_images(runtime, images, local):
    """The KServe SDK's REST client with binary_data=True: raw image bytes after the JSON, never
    read as text."""
    async def sdk():
        tensor = InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(images[:2], dtype=np.object_), binary_data=True)
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            return await client.infer(runtime.url, InferRequest(MODEL_NAME, [tensor]), model_name=MODEL_NAME)
    for got, want in zip(v2_topk(run(sdk())), local[MODEL_NAME].predict(images[:2]), strict=True):
        assert_same_topk(got, want)


def binary_body(elements: list[bytes], size: int | None = None, **request) -> tuple[bytes, dict]:
    """An OIP v2 body in the binary tensor extension, framed by hand as the spec says: the JSON,
    then each BYTES element as a 4-byte little-endian length and its bytes (`size`: the
    binary_data_size to claim instead of the true one)."""
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(elements)],
                                     "parameters": {"binary_data_size": len(raw) if size is None else size}}],
                         **request}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.integration
def test_binary_outputs_when_asked_json_otherwise(runtime, images, local):
    expected = local[MODEL_NAME].predict(images[:2], 3)
    body, headers = binary_body(images[:2], parameters={"binary_data_output": True, "topk": 3})
    r = requests.post(v2(runtime.url), data=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    outputs = json.loads(r.content[:json_length])["outputs"]
    assert all("data" not in o for o in outputs)  # the values follow the JSON, in binary
    assert sum(o["parameters"]["binary_data_size"] for o in outputs) == len(r.content) - json_length
    for g, want in zip(v2_topk(InferResponse.from_bytes(r.content, json_length)), expected, strict=True):
        assert_same_topk(g, want)
    # one output, as JSON: only what was asked for, in the form asked for
    body, headers = binary_body(images[:1], outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
    r = requests.post(v2(runtime.url), data=body, headers=headers, timeout=30)
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    [probabilities] = r.json()["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [1, 5]
    assert probabilities["data"] == pytest.approx(list(local[MODEL_NAME].predict(images[:1])[0].values()), abs=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("case, says", [
    ("header-too-long", "inference-header-content-length must be the length of the JSON"),
    ("header-not-a-number", "inference-header-content-length must be the length of the JSON"),
    ("size-past-the-end", "binary_data_size 1000000 runs past the end of the body"),
    ("bytes-left-over", "bytes after the last input's binary data"),
    ("no-data", 'has neither "data" nor a binary_data_size parameter'),
    ("unknown-output", 'this model has no output "logits"'),
    ("bad-framing", "are not a valid BYTES tensor"),
    ("not-an-image", "image[1]: body is not an image"),
])
def test_broken_binary_framing_gets_a_named_400(runtime, images, case, says):
    body, headers = binary_body([images[0], b"junk" if case == "not-an-image" else images[1]])
    if case == "header-too-long":
        headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    elif case == "header-not-a-number":
        headers["Inference-Header-Content-Length"] = "ten"
    elif case == "size-past-the-end":
        body, headers = binary_body(images[:2], size=10**6)
    elif case == "bytes-left-over":
        body += b"extra"
    elif case == "no-data":
        body = json.dumps(v2_body(["AA=="]) | {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}).encode()
        headers = {}
    elif case == "unknown-output":
        body, headers = binary_body(images[:1], outputs=[{"name": "logits"}])
    elif case == "bad-framing":
        length = int(headers["Inference-Header-Content-Length"])
        body = body[:length] + b"\xff\xff\xff\xff" + body[length + 4:]
    r = requests.post(v2(runtime.url), data=body, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["reason"] in ("malformed_request", "invalid_image"), r.text
    assert says in r.json()["error"], r.json()
    assert requests.get(f"{runtime.url}/v2/health/ready", timeout=10).status_code == 200


def grpc_tensor(data: list, shape=None, datatype="BYTES") -> pb.ModelInferRequest.InferInputTensor:
    field = "bytes_contents" if datatype == "BYTES" else "fp32_contents"
    contents = pb.InferTensorContents(**{field: data})
    return pb.ModelInferRequest.InferInputTensor(name="image", datatype=datatype, shape=shape or [len(data)],
                                                 contents=contents)


@pytest.mark.integration
@pytest.mark.parametrize("request_, code, says", [
    (pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([b"junk"])]),
     grpc.StatusCode.INVALID_ARGUMENT, "image[0]: body is not an image"),
    (pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([b"x"], shape=[3])]),
     grpc.StatusCode.INVALID_ARGUMENT, "shape [3] does not match 1 data elements"),
    (pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([1.0], datatype="FP32")]),
     grpc.StatusCode.INVALID_ARGUMENT, "must have datatype BYTES"),
    (pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([b"x"] * 2), grpc_tensor([b"x"])]),
     grpc.StatusCode.INVALID_ARGUMENT, "exactly one tensor"),
    (pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([b"x"])],
                          parameters={"topk": pb.InferParameter(string_param="many")}),
     grpc.StatusCode.INVALID_ARGUMENT, "topk must be an integer"),
    (pb.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[b"\xff\xff\xff\xff"], inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])]),
     grpc.StatusCode.INVALID_ARGUMENT, "(gRPC raw_input_contents, REST binary data) are not a valid BYTES"),
    (pb.ModelInferRequest(model_name="nope", inputs=[grpc_tensor([b"x"])]),
     grpc.StatusCode.NOT_FOUND, "nope"),
], ids=["not-an-image", "shape", "datatype", "two-inputs", "topk", "raw-framing", "unknown-model"])
def test_bad_grpc_input_gets_a_status_with_the_message(runtime, request_, code, says):
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as e:
            GRPCInferenceServiceStub(channel).ModelInfer(request_, timeout=30)
    assert e.value.code() == code and says in e.value.details(), e.value.details()


@pytest.mark.integration
def test_decompression_bomb_over_grpc_is_refused_and_the_runtime_keeps_serving(runtime, images, local):
    bomb = png_bytes(Image.fromarray(np.zeros((8000, 8000), dtype=np.uint8)))  # 64 Mpx, small file
    with grpc.insecure_channel(runtime.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[grpc_tensor([bomb])]),
                            timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixel" in e.value.details()
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert runtime.proc.poll() is None
    r = requests.post(v1(runtime.url), json={"instances": [b64(images[0])]}, timeout=30)
    assert_same_topk(r.json()["predictions"][0], local[MODEL_NAME].predict([images[0]])[0])


# --- parity with a real TorchServe serving the same archives ------------------------------------

@pytest.mark.integration
def test_v1_bodies_match_torchserve(runtime, torchserve, images):
    body = {"instances": [b64(png) for png in images] + [b64(b"junk")], "parameters": {"topk": 3}}
    ours = requests.post(v1(runtime.url), json=body, timeout=60)
    theirs = requests.post(v1(torchserve.settings.inference_url), json=body, timeout=60)
    assert ours.status_code == theirs.status_code == 200
    ours, theirs = ours.json(), theirs.json()
    assert ours.keys() == theirs.keys()
    assert (ours["model_name"], ours["model_version"]) == (theirs["model_name"], theirs["model_version"])
    assert len(ours["predictions"]) == len(theirs["predictions"])
    for got, want in zip(ours["predictions"], theirs["predictions"]):
        if "error" in want:
            assert got == want
        else:
            assert_same_topk(got, want)


@pytest.mark.integration
def test_v2_bodies_match_torchserve(runtime, torchserve, images):
    body = v2_body([b64(png) for png in images], id="parity-1", parameters={"topk": 4})
    ours = requests.post(v2(runtime.url), json=body, timeout=60)
    theirs = requests.post(v2(torchserve.settings.inference_url), json=body, timeout=60)
    assert ours.status_code == theirs.status_code == 200
    ours, theirs = without_kserve_nulls(ours.json()), theirs.json()
    assert ours.keys() == theirs.keys()
    assert [o.keys() for o in ours["outputs"]] == [o.keys() for o in theirs["outputs"]]
    for field in ("id", "model_name", "model_version"):
        assert ours[field] == theirs[field]
    for got, want in zip(ours["outputs"], theirs["outputs"], strict=True):
        assert (got["name"], got["datatype"], got["shape"]) == (want["name"], want["datatype"], want["shape"])
    for got, want in zip(v2_topk(ours), v2_topk(theirs), strict=True):
        assert_same_topk(got, want)


@pytest.mark.integration
@pytest.mark.parametrize("route, body", [
    ("v1", {"instances": [b64(b"junk")]}),
    ("v1", {"instances": ["@@"]}),
    ("v1", {"instances": "not a list"}),
    ("v1", {"instances": ["AA=="], "parameters": {"topk": "lots"}}),
    ("v2", v2_body([1.0], datatype="FP32")),
    ("v2", v2_body(["AA=="], shape=[2])),
    ("v2", v2_body([b64(b"junk")])),
    ("v2", v2_body(["AA=="] * (DEFAULT_MAX_IMAGES + 1))),
])
def test_error_bodies_match_torchserve(runtime, torchserve, route, body):
    path = v1 if route == "v1" else v2
    ours = requests.post(path(runtime.url), json=body, timeout=30)
    theirs = requests.post(path(torchserve.settings.inference_url), json=body, timeout=30)
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())


@pytest.mark.integration
def test_imagenet_matches_torchserve_on_chelsea(runtime, torchserve, chelsea):
    body = {"instances": [{"b64": b64(chelsea)}]}
    ours = requests.post(v1(runtime.url, IMAGENET_NAME), json=body, timeout=60).json()["predictions"][0]
    theirs = requests.post(v1(torchserve.settings.inference_url, IMAGENET_NAME), json=body,
                           timeout=60).json()["predictions"][0]
    assert next(iter(ours)) in CATS
    assert_same_topk(ours, theirs)


@pytest.mark.integration
def test_the_event_loop_is_uvloop_unless_asked_otherwise():
    import uvloop

    assert kserve_adapter.loop_factory("auto") is uvloop.new_event_loop
    assert kserve_adapter.loop_factory("uvloop") is uvloop.new_event_loop
    assert kserve_adapter.loop_factory("asyncio") is asyncio.new_event_loop


def test_each_request_logs_one_access_line_and_no_timing_lines(runtime, images):
    """kserve's TimingMiddleware (two kserve.trace lines per request) is left out: /metrics has
    the timings. The access log stays."""
    marker = f"probe={time.time_ns()}"
    r = requests.post(f"{runtime.url}/v1/models/{MODEL_NAME}:predict?{marker}", data=images[0],
                      headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30  # the access line is written after the answer: poll for it
    while marker not in runtime.log_file.read_text():
        assert time.monotonic() < deadline, f"no access line with {marker} after 30 s:\n{runtime.log_tail()}"
        time.sleep(0.1)
    log = runtime.log_file.read_text().splitlines()
    assert sum(marker in line for line in log) == 1, runtime.log_tail()
    assert not [line for line in log if "kserve.trace" in line]


def test_the_runtime_stops_on_sigterm_and_removes_its_unpacked_archives(store, tmp_path):
    rt = KServeRuntime(store / "model-store", tmp_path, *free_ports(2)).start()
    try:
        (unpacked,) = rt.tmp.glob("kserve-runtime-*")
        assert sorted(p.name for p in unpacked.iterdir()) == sorted([f"{IMAGENET_NAME}-1.0", f"{MODEL_NAME}-1.0"])
    finally:
        rt.stop()
    assert rt.proc.returncode == 0, rt.log_tail()
    assert not unpacked.exists()


def test_handler_metrics_have_torchserves_names_and_labels(runtime, images):
    """One dashboard serves both runtimes: the same metric names and labels as TorchServe's."""
    from handlers import metrics as m
    from tests.helpers import metric_value as value

    labels = {"ModelName": MODEL_NAME, "ModelVersion": "1.0", "Level": "Model"}
    before = requests.get(runtime.metrics_url, timeout=10).text
    ok = requests.post(v1(runtime.url), json={"instances": [{"b64": base64.b64encode(images[0]).decode()}]}, timeout=30)
    bad = requests.post(v1(runtime.url), json={"instances": [{"b64": base64.b64encode(b"junk").decode()}]}, timeout=30)
    assert (ok.status_code, bad.status_code) == (200, 400)
    after = requests.get(runtime.metrics_url, timeout=10).text
    delta = lambda name, **kw: value(after, name, **labels, **kw) - value(before, name, **labels, **kw)  # noqa: E731
    assert delta(m.REJECTED, reason="invalid_image") == 1
    assert sum(delta(m.PREDICTIONS, label=label) for label in ok.json()["predictions"][0]) == 1
    assert delta(f"{m.STAGE_SECONDS}_count", stage="handle") == 2
    assert delta(f"{m.STAGE_SECONDS}_count", stage="inference") == 1
    assert value(after, m.MODEL_LOAD_SECONDS, **labels) > 0


def test_an_async_model_store_is_waited_for(tmp_path):
    """MODEL_INIT_MODE=async (KServe's modelcar): the archives appear after the runtime starts."""
    store = tmp_path / "model-store"
    threading.Timer(0.3, lambda: (store.mkdir(), (store / "m.mar").write_bytes(b"x"))).start()
    started = time.monotonic()
    server.wait_for_model_store(store, timeout=10, poll=0.05)
    assert 0.25 < time.monotonic() - started < 5
    with pytest.raises(server.ArchiveLoadError, match=r"no .mar files in .* after waiting 0 s"):
        server.wait_for_model_store(tmp_path / "never", timeout=0.2, poll=0.05)

"""Wire-protocol clients: every way a caller can ask a served model for the top-k of an image.
They know only the protocols (REST native, KServe v1, OIP v2 REST, TorchServe gRPC, OIP gRPC),
never the server's code. KServe's SDK clients are used where they fit. A `token` is sent as
`Authorization: Bearer <token>` (REST header, gRPC metadata) to a server with authentication on,
a `traceparent` (W3C trace context) the same way, so the server's spans join the caller's trace."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets

import grpc
import httpx
import requests
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from handlers.auth import bearer
from scripts.client import grpc_stubs

PROTOCOLS = ("rest", "v1", "v2", "grpc", "oip")


class PredictError(RuntimeError):
    pass


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def _error_message(status: int, text: str) -> str:
    try:
        body = json.loads(text)
        message = body.get("error") or body.get("message") or body
    except ValueError:
        message = text.strip()
    return f"HTTP {status}: {message}"


def new_traceparent() -> tuple[str, str]:
    """A new sampled W3C trace context: (its trace id, the `traceparent` value)."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def call_headers(token: str | None, traceparent: str | None = None) -> dict[str, str]:
    return {**bearer(token), **({"traceparent": traceparent} if traceparent else {})}


def grpc_metadata(token: str | None, traceparent: str | None = None) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in call_headers(token, traceparent).items())


def rest_native(url: str, model: str, image: bytes, topk: int | None = None, timeout: float = 30,
                token: str | None = None, traceparent: str | None = None) -> dict:
    """POST raw bytes to TorchServe's /predictions/<model>; k via the X-TopK header."""
    headers = {"Content-Type": "application/octet-stream", **({"X-TopK": str(topk)} if topk else {}),
               **call_headers(token, traceparent)}
    try:
        r = requests.post(f"{url.rstrip('/')}/predictions/{model}", data=image, headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise PredictError(f"cannot reach {url}: {e}") from None
    if r.status_code != 200:
        raise PredictError(_error_message(r.status_code, r.text))
    return r.json()


async def _rest_infer(url: str, model: str, data, protocol: str, token: str | None = None,
                      traceparent: str | None = None):
    client = InferenceRESTClient(RESTConfig(protocol=protocol, timeout=60))
    try:
        return await client.infer(url, data, model_name=model, headers=call_headers(token, traceparent) or None)
    except httpx.HTTPStatusError as e:
        raise PredictError(_error_message(e.response.status_code, e.response.text)) from None
    except httpx.HTTPError as e:
        raise PredictError(f"cannot reach {url}: {e}") from None
    finally:
        await client.close()


def rest_v1(url: str, model: str, images: list[bytes], topk: int | None = None, token: str | None = None,
            traceparent: str | None = None) -> list[dict]:
    """KServe v1 `:predict` with base64 instances (kserve.InferenceRESTClient)."""
    body = {"instances": [{"b64": _b64(i)} for i in images], **({"parameters": {"topk": topk}} if topk else {})}
    return asyncio.run(_rest_infer(url, model, body, "v1", token, traceparent))["predictions"]


def oip_request(model: str, images: list[bytes], encode_b64: bool, topk: int | None) -> InferRequest:
    data = [_b64(i) for i in images] if encode_b64 else list(images)
    tensor = InferInput("image", [len(images)], "BYTES", data=data)
    return InferRequest(model_name=model, infer_inputs=[tensor], parameters={"topk": topk} if topk else None)


def topk_from_outputs(outputs) -> list[dict]:
    """OIP outputs `labels` (BYTES [N, k]) and `probabilities` (FP32 [N, k]) → N top-k dicts."""
    by_name = {o.name: o for o in outputs}
    labels, probs = by_name["labels"], by_name["probabilities"]
    n, k = labels.shape
    decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    # as_numpy: from JSON data, typed gRPC contents or raw_output_contents alike
    ls, ps = [decode(v) for v in labels.as_numpy().reshape(-1)], [float(p) for p in probs.as_numpy().reshape(-1)]
    return [dict(zip(ls[i * k:(i + 1) * k], ps[i * k:(i + 1) * k])) for i in range(n)]


def rest_v2(url: str, model: str, images: list[bytes], topk: int | None = None, token: str | None = None,
            traceparent: str | None = None) -> list[dict]:
    """OIP v2 REST `/v2/models/<m>/infer` with base64 BYTES (kserve.InferenceRESTClient)."""
    response = asyncio.run(_rest_infer(url, model, oip_request(model, images, True, topk), "v2", token, traceparent))
    return topk_from_outputs(response.outputs)


def grpc_native(target: str, model: str, image: bytes, timeout: float = 30, token: str | None = None,
                traceparent: str | None = None) -> dict:
    """TorchServe's own gRPC API (InferenceAPIsService/Predictions), stubs from its jar."""
    stubs = grpc_stubs.load()
    with grpc.insecure_channel(target) as channel:
        stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        try:
            reply = stub.Predictions(stubs.inference_pb2.PredictionsRequest(model_name=model, input={"data": image}),
                                     timeout=timeout, metadata=grpc_metadata(token, traceparent))
        except grpc.RpcError as e:
            raise PredictError(f"gRPC {e.code().name}: {e.details()}") from None
    body = json.loads(reply.prediction)
    # TorchServe 0.12's gRPC frontend answers OK whatever status the handler set per request:
    # our handler's error body is the only sign of a refused input.
    if isinstance(body, dict) and {"error", "reason", "code"} <= body.keys():
        raise PredictError(f"gRPC (handler status {body['code']}): {body['error']}")
    return body


def grpc_oip_torchserve(target: str, model: str, image: bytes, timeout: float = 30) -> dict:
    """TorchServe's own OIP gRPC service (archive --protocol oip). It is not the standard
    `inference.GRPCInferenceService`, so KServe's client cannot call it: stubs from its jar."""
    stubs = grpc_stubs.load()
    pb = stubs.open_inference_grpc_pb2
    tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1],
                                                   contents=pb.InferTensorContents(bytes_contents=[image]))
    with grpc.insecure_channel(target) as channel:
        stub = stubs.open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply = stub.ModelInfer(pb.ModelInferRequest(model_name=model, inputs=[tensor]), timeout=timeout)
        except grpc.RpcError as e:
            raise PredictError(f"gRPC {e.code().name}: {e.details()}") from None
    body = json.loads(reply.outputs[0].contents.bytes_contents[0])
    if isinstance(body, str):  # the frontend JSON-encodes string outputs once more on some paths
        body = json.loads(body)
    if {"error", "reason", "code"} <= body.keys():  # answered OK regardless, as in grpc_native
        raise PredictError(f"gRPC (handler status {body['code']}): {body['error']}")
    return body


def grpc_oip(target: str, model: str, images: list[bytes], topk: int | None = None,
             token: str | None = None, traceparent: str | None = None) -> list[dict]:
    """Open Inference Protocol gRPC (`inference.GRPCInferenceService`, raw BYTES), with
    kserve.InferenceGRPCClient: the KServe-native runtime speaks it."""
    async def call():
        client = InferenceGRPCClient(target, timeout=60)
        try:
            return await client.infer(oip_request(model, images, False, topk),
                                      headers=grpc_metadata(token, traceparent) or None)
        except grpc.RpcError as e:
            raise PredictError(f"gRPC {e.code().name}: {e.details()}") from None
        finally:
            await client.close()
    return topk_from_outputs(asyncio.run(call()).outputs)

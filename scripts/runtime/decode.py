"""Requests as kserve decodes them (an InferRequest for OIP v2 REST and gRPC, a JSON value or raw
bytes for v1) into handlers.inputs.ParsedRequest, through the archive handler's own rules; and OIP
v2 REST bodies that kserve would misread (the binary tensor extension) into an InferRequest."""
from __future__ import annotations

import struct

import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (InferInput, InferRequest, RequestedOutput, deserialize_bytes_tensor,
                                        to_http_parameters)
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from handlers.errors import InputError, MalformedRequest
from handlers.inputs import ParsedRequest, parse_row
from handlers.limits import DEFAULT_MAX_IMAGES


def _elements(tensor) -> list | None:
    """The BYTES elements of an OIP input tensor: JSON `data`, gRPC `bytes_contents`, or raw
    contents (gRPC's `raw_input_contents`, REST binary data: length-prefixed elements)."""
    if tensor._raw_data is None:  # kserve keeps raw contents only on this private attribute
        return tensor.data
    if tensor.datatype != "BYTES":
        return None  # parse_row refuses the datatype before it looks at the data
    try:
        return deserialize_bytes_tensor(tensor._raw_data).tolist()
    except struct.error:  # a length prefix past the end: the client's framing
        raise MalformedRequest(f'input "{tensor.name}": its raw contents (gRPC raw_input_contents, REST binary '
                               'data) are not a valid BYTES tensor (a 4-byte little-endian length before each '
                               'element)') from None


def parse_oip(request: InferRequest, max_bytes: int, max_images: int = DEFAULT_MAX_IMAGES) -> ParsedRequest:
    """An OIP v2 request (REST or gRPC) through parse_row's own v2 rules. gRPC carries each image as
    its raw bytes, REST JSON as base64: a raw element enters parse_row as an empty base64 string,
    so the envelope checks and their messages stay parse_row's, and is put back afterwards."""
    try:
        tensors, raw = [], {}
        for i, tensor in enumerate(request.inputs):
            data = _elements(tensor)
            if i == 0 and isinstance(data, list):
                raw = {j: bytes(x) for j, x in enumerate(data) if isinstance(x, (bytes, bytearray))}
                data = ["" if j in raw else x for j, x in enumerate(data)]
            tensors.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                            "parameters": to_http_parameters(tensor.parameters or {}), "data": data})
    except InputError as e:
        return ParsedRequest(protocol="v2", error=e)
    body = {"id": request.id or None, "parameters": to_http_parameters(request.parameters or {}),
            "inputs": tensors}
    parsed = parse_row({"body": body}, max_bytes, max_images=max_images)
    if parsed.error is None:
        parsed.images = [raw.get(j, image) for j, image in enumerate(parsed.images)]
    return parsed


def parse_request(payload, headers: dict[str, str], max_bytes: int,
                  max_images: int = DEFAULT_MAX_IMAGES) -> ParsedRequest:
    """Whatever kserve decoded: an InferRequest (v2 REST, gRPC), a JSON value (v1 REST) or the raw
    body (a non-JSON content type on the v1 route, as TorchServe's native protocol)."""
    if isinstance(payload, InferRequest):
        return parse_oip(payload, max_bytes, max_images)
    return parse_row({"body": payload}, max_bytes, headers.get("content-type"), headers.get("x-topk"),
                     max_images)


# The binary tensor extension's header: how many leading bytes of the body are the JSON request
INFERENCE_HEADER_LENGTH = "inference-header-content-length"


def field_path(loc: tuple) -> str:
    """("inputs", 0, "shape") → "inputs[0].shape"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def schema_problems(errors: list[dict], skip: int = 0) -> str:
    """Pydantic's complaints about a v2 body, each at its field (`skip`: leading parts of each
    location that name no field, e.g. FastAPI's ("body", "InferenceRequest"))."""
    return "; ".join(f"{field_path(tuple(e.get('loc', ()))[skip:])}: {e.get('msg')}" for e in errors)


def rest_v2_request(body: bytes, headers: dict[str, str], model_name: str) -> InferRequest:
    """An OIP v2 REST body that arrived as bytes (no JSON content type): JSON, or JSON followed by
    binary tensor data (the binary tensor extension, which Triton's tritonclient uses: the JSON's
    length in Inference-Header-Content-Length, each binary input's size in its binary_data_size
    parameter). BYTES elements keep their raw bytes (kserve decodes them as UTF-8 text, which
    fails for an image). A body that breaks the framing is an InvalidInput naming the problem."""
    raw_length = headers.get(INFERENCE_HEADER_LENGTH)
    if raw_length is None:
        json_length = len(body)
    elif not raw_length.strip().isdigit() or not 0 < int(raw_length) <= len(body):
        raise InvalidInput(f"{INFERENCE_HEADER_LENGTH} must be the length of the JSON at the start of the "
                           f"body, between 1 and {len(body)}; got {raw_length!r}")
    else:
        json_length = int(raw_length)
    try:
        parsed = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not valid JSON" if raw_length is None else
                           f"the first {json_length} bytes of the body ({INFERENCE_HEADER_LENGTH}) are not a JSON "
                           "request") from None
    # kserve's schema wants "data" in every input; one in binary has none: checked below instead
    binary = {i for i, t in enumerate(parsed.get("inputs") or [] if isinstance(parsed, dict) else [])
              if isinstance(t, dict) and "data" not in t}
    if binary:
        parsed = {**parsed, "inputs": [{**t, "data": []} if i in binary else t for i, t in enumerate(parsed["inputs"])]}
    try:
        header = InferenceRequest.model_validate(parsed)
    except ValidationError as e:
        raise InvalidInput(f"not an OIP v2 inference request: {schema_problems(e.errors())}") from None
    inputs, offset = [], json_length
    for i, tensor in enumerate(header.inputs):
        parameters = tensor.parameters or {}
        infer_input = InferInput(name=tensor.name, shape=tensor.shape, datatype=tensor.datatype, parameters=parameters)
        size = parameters.get("binary_data_size")
        if i not in binary:
            infer_input.data = tensor.data
        elif size is None:
            raise InvalidInput(f'inputs[{i}] ("{tensor.name}") has neither "data" nor a binary_data_size parameter')
        elif not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidInput(f'inputs[{i}] ("{tensor.name}"): binary_data_size {size!r} runs past the end of the '
                               f"body ({len(body) - offset} bytes of binary data left)")
        else:
            infer_input._raw_data = body[offset:offset + size]  # parse_oip reads BYTES elements from here
            offset += size
        inputs.append(infer_input)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes after the last input's binary data: the binary_data_size "
                           "parameters do not add up to the body")
    outputs = [RequestedOutput(name=o.name, parameters=o.parameters) for o in header.outputs or []]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=header.id,
                        parameters=header.parameters, request_outputs=outputs or None)

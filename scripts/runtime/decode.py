"""Requests as kserve decodes them (an InferRequest for OIP v2 REST and gRPC, a JSON value or raw
bytes for v1) into handlers.inputs.ParsedRequest, through the archive handler's own rules."""
from __future__ import annotations

import struct

from kserve.protocol.infer_type import InferRequest, deserialize_bytes_tensor, to_http_parameters

from handlers.errors import InputError, MalformedRequest
from handlers.inputs import ParsedRequest, parse_row


def _elements(tensor) -> list | None:
    """The BYTES elements of an OIP input tensor: JSON `data`, gRPC `bytes_contents`, or gRPC's
    `raw_input_contents` (length-prefixed elements)."""
    if tensor._raw_data is None:  # kserve keeps raw contents only on this private attribute
        return tensor.data
    if tensor.datatype != "BYTES":
        return None  # parse_row refuses the datatype before it looks at the data
    try:
        return deserialize_bytes_tensor(tensor._raw_data).tolist()
    except struct.error:  # a length prefix past the end: the client's framing
        raise MalformedRequest(f'input "{tensor.name}": raw_input_contents is not a valid BYTES '
                               'tensor (4-byte little-endian length before each element)') from None


def parse_oip(request: InferRequest, max_bytes: int) -> ParsedRequest:
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
    parsed = parse_row({"body": body}, max_bytes)
    if parsed.error is None:
        parsed.images = [raw.get(j, image) for j, image in enumerate(parsed.images)]
    return parsed


def parse_request(payload, headers: dict[str, str], max_bytes: int) -> ParsedRequest:
    """Whatever kserve decoded: an InferRequest (v2 REST, gRPC), a JSON value (v1 REST) or the raw
    body (a non-JSON content type on the v1 route, as TorchServe's native protocol)."""
    if isinstance(payload, InferRequest):
        return parse_oip(payload, max_bytes)
    return parse_row({"body": payload}, max_bytes, headers.get("content-type"), headers.get("x-topk"))

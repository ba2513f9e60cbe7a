"""Request decoding: one TorchServe request row → a ParsedRequest (protocol, image bytes, options)
or a typed InputError. Every envelope is unwrapped here; the model path never sees transports.

Accepted on the same endpoint set (no TorchServe `service_envelope` needed):
  raw bytes body (any image type)            → native
  multipart/form-data file field             → native
  JSON {"data"|"b64": "<base64>"}            → native
  KServe v1 {"instances": [{"b64"|"data": "<base64>"} | "<base64>", ...]}
  Open Inference Protocol v2 {"inputs": [{"name", "datatype": "BYTES", "shape": [N], "data": [...]}]}
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from handlers.errors import (EmptyInput, ImageTooLarge, InputError, InvalidBase64, InvalidOption,
                             MalformedRequest, UnsupportedPayload)
from handlers.limits import DEFAULT_MAX_IMAGES

NATIVE, V1, V2 = "native", "v1", "v2"
# TorchServe's stock kservev2 envelope (needed for its OIP gRPC) hands the handler one row per
# input tensor of the first request, {"name", "shape", "datatype", "data": <first element>}, with
# BYTES already base64-encoded by the frontend.
ENVELOPE_V2 = "envelope-v2"
# TorchServe's stock kserve (v1) envelope hands the handler the `instances` of the first request,
# one row per instance: {"b64"|"data": "<base64>"} or a bare base64 string.
ENVELOPE_V1 = "envelope-v1"
BODY_KEYS = ("body", "data")
OPTION_KEYS = ("topk",)
MAX_TOPK = 1000


@dataclass
class ParsedRequest:
    protocol: str = NATIVE
    images: list[bytes | InputError] = field(default_factory=list)
    topk: int | None = None
    request_id: str | None = None
    input_name: str = "image"
    error: InputError | None = None  # set when the request as a whole is unusable


def parse_topk(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise InvalidOption(f"topk must be an integer, got {value!r}") from None
    if not 1 <= k <= MAX_TOPK:
        raise InvalidOption(f"topk must be between 1 and {MAX_TOPK}, got {k}")
    return k


def decode_b64(text, max_bytes: int, where: str) -> bytes:
    if not isinstance(text, str):
        raise UnsupportedPayload(f"{where}: expected a base64 string, got {type(text).__name__}")
    if len(text) * 3 // 4 > max_bytes:  # refuse before allocating the decoded copy
        raise ImageTooLarge(f"{where}: base64 image decodes to over the {max_bytes}-byte limit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"{where}: not valid base64") from None


def _parameters(owner: dict, where: str) -> dict:
    """The `parameters` object of a v1/v2 body or tensor. Anything but an object is refused here:
    calling .get on a JSON list or string raised in the worker, which fails the whole batch."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise MalformedRequest(f'{where}"parameters" must be a JSON object, got {type(params).__name__}')
    return params


def _body(row: dict):
    for key in BODY_KEYS:
        if row.get(key) is not None:
            return row[key]
    # multipart/form-data: the file arrives under its form field's name
    for key, value in row.items():
        if key not in OPTION_KEYS and isinstance(value, (bytes, bytearray)):
            return value
    return None


def _image_or_error(item, max_bytes: int, where: str) -> bytes | InputError:
    try:
        if isinstance(item, dict):
            key = "b64" if "b64" in item else "data" if "data" in item else None
            if key is None:
                raise UnsupportedPayload(f'{where}: expected {{"b64": "<base64 image>"}}')
            item = item[key]
        return decode_b64(item, max_bytes, where)
    except InputError as e:
        return e


def _parse_v1(body: dict, max_bytes: int, max_images: int) -> ParsedRequest:
    instances = body["instances"]
    req = ParsedRequest(protocol=V1)
    req.topk = parse_topk(_parameters(body, "").get("topk"))
    if not isinstance(instances, list) or not instances:
        raise MalformedRequest('"instances" must be a non-empty list of {"b64": "<base64 image>"}')
    if len(instances) > max_images:
        raise MalformedRequest(f"at most {max_images} instances per request, got {len(instances)}")
    req.images = [_image_or_error(item, max_bytes, f"instances[{i}]") for i, item in enumerate(instances)]
    return req


def _parse_v2(body: dict, max_bytes: int, max_images: int) -> ParsedRequest:
    inputs = body["inputs"]
    req = ParsedRequest(protocol=V2, request_id=body.get("id"))
    req.topk = parse_topk(_parameters(body, "").get("topk"))
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise MalformedRequest('"inputs" must hold exactly one tensor: the encoded images')
    tensor = inputs[0]
    req.input_name = str(tensor.get("name") or "image")
    if tensor.get("datatype") != "BYTES":
        raise MalformedRequest(f'input "{req.input_name}" must have datatype BYTES (encoded image '
                               f'files), got {tensor.get("datatype")!r}')
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(data, list) or not data:
        raise MalformedRequest(f'input "{req.input_name}": "data" must be a non-empty list')
    if shape != [len(data)]:
        raise MalformedRequest(f'input "{req.input_name}": shape {shape} does not match {len(data)} '
                               f'data elements (expected [{len(data)}])')
    if len(data) > max_images:
        raise MalformedRequest(f"at most {max_images} images per request, got {len(data)}")
    req.topk = parse_topk(_parameters(tensor, f'input "{req.input_name}": ').get("topk")) or req.topk
    req.images = [_image_or_error(item, max_bytes, f'{req.input_name}[{i}]') for i, item in enumerate(data)]
    return req


def is_envelope_input(row) -> bool:
    return isinstance(row, dict) and "datatype" in row and "name" in row and "shape" in row


def is_v1_envelope_instance(row) -> bool:
    return isinstance(row, str) or (isinstance(row, dict) and bool(row) and set(row) <= {"b64", "data"}
                                    and all(isinstance(v, str) for v in row.values()))


def parse_v1_envelope_instance(row, max_bytes: int, index: int) -> ParsedRequest:
    where = f"instances[{index}]"
    return ParsedRequest(protocol=ENVELOPE_V1, input_name=where, images=[_image_or_error(row, max_bytes, where)])


def parse_envelope_input(row: dict, max_bytes: int) -> ParsedRequest:
    name = str(row.get("name") or "image")
    req = ParsedRequest(protocol=ENVELOPE_V2, input_name=name)
    if row.get("datatype") != "BYTES":
        req.error = MalformedRequest(f'input "{name}" must have datatype BYTES (encoded image files), '
                                     f'got {row.get("datatype")!r}')
    else:
        req.images = [_image_or_error(row.get("data"), max_bytes, name)]
    return req


def parse_row(row: dict, max_bytes: int, content_type: str | None = None,
              topk_header: str | None = None, max_images: int = DEFAULT_MAX_IMAGES) -> ParsedRequest:
    """Never raises: a request that cannot be used at all carries its error in `.error`.
    Native requests take k from an `X-TopK` header (TorchServe 0.12 does not pass query
    parameters of a POST with a body to the worker) or a multipart `topk` field."""
    try:
        body = _body(row)
        topk = parse_topk(row.get("topk") or topk_header)
        if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
            raise EmptyInput("request has no body: send the image bytes (or a JSON envelope)")
        if isinstance(body, (bytes, bytearray)):
            if content_type and content_type.split(";")[0].strip() == "application/json":
                raise MalformedRequest("body is declared application/json but is not valid JSON")
            return ParsedRequest(images=[bytes(body)], topk=topk)
        if isinstance(body, dict):
            if "instances" in body:
                return _parse_v1(body, max_bytes, max_images)
            if "inputs" in body:
                return _parse_v2(body, max_bytes, max_images)
            if "b64" in body or "data" in body:
                return ParsedRequest(images=[_image_or_error(body, max_bytes, "body")],
                                     topk=parse_topk(body.get("topk")) or topk)
        raise UnsupportedPayload(
            f"unsupported request body ({type(body).__name__}): send image bytes, a multipart file, "
            f'JSON {{"b64": ...}}, KServe v1 {{"instances": [...]}} or v2 {{"inputs": [...]}}')
    except InputError as e:
        return ParsedRequest(error=e)

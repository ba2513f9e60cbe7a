import base64

import pytest

from handlers import inputs
from handlers.errors import EmptyInput, ImageTooLarge, UnsupportedPayload

PNG = b"\x89PNG fake but bytes"
B64 = base64.b64encode(PNG).decode()


def parse(row, content_type=None, max_bytes=1000):
    return inputs.parse_row(row, max_bytes, content_type)


def v2(data, shape=None, datatype="BYTES", **extra):
    return {"body": {"inputs": [{"name": "img", "datatype": datatype,
                                 "shape": [len(data)] if shape is None else shape, "data": data}], **extra}}


def test_raw_body_and_multipart_field_are_native_images():
    assert parse({"body": bytearray(PNG)}).images == [PNG]
    assert parse({"upload": PNG, "topk": b"3"}) == inputs.ParsedRequest(images=[PNG], topk=3)


def test_json_b64_body_is_decoded():
    req = parse({"body": {"b64": B64, "topk": 2}})
    assert (req.protocol, req.images, req.topk) == (inputs.NATIVE, [PNG], 2)


@pytest.mark.parametrize("row, error, message", [
    ({}, EmptyInput, "no body"),
    ({"body": b""}, EmptyInput, "no body"),
    ({"body": "plain text"}, UnsupportedPayload, "str"),
    ({"body": {"pixels": []}}, UnsupportedPayload, "instances"),
    ({"body": PNG, "topk": b"many"}, inputs.InvalidOption, "integer"),
    ({"body": PNG, "topk": b"0"}, inputs.InvalidOption, "between 1"),
    ({"body": {"instances": []}}, inputs.MalformedRequest, "non-empty"),
    ({"body": {"instances": [B64] * 65}}, inputs.MalformedRequest, "at most 64"),
    (v2([B64], datatype="FP32"), inputs.MalformedRequest, "BYTES"),
    (v2([B64, B64], shape=[3]), inputs.MalformedRequest, "does not match"),
    ({"body": {"inputs": []}}, inputs.MalformedRequest, "exactly one"),
    # a non-object "parameters" used to raise AttributeError in the worker: 503 for the whole batch
    ({"body": {"instances": [B64], "parameters": "topk=3"}}, inputs.MalformedRequest, '"parameters" must be a JSON object'),
    (v2([B64], parameters=[3]), inputs.MalformedRequest, '"parameters" must be a JSON object, got list'),
    ({"body": {"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "data": [B64], "parameters": 3}]}},
     inputs.MalformedRequest, 'input "img": "parameters" must be a JSON object, got int'),
])
def test_unusable_requests_carry_a_named_error(row, error, message):
    req = parse(row)
    assert isinstance(req.error, error) and message in str(req.error)


def test_invalid_json_declared_as_json_is_a_malformed_request():
    req = parse({"body": b"{not json"}, content_type="application/json; charset=utf-8")
    assert isinstance(req.error, inputs.MalformedRequest)


def test_v1_bad_instances_fail_alone():
    req = parse({"body": {"instances": [B64, {"b64": "***"}, {"data": B64}, {"x": 1}, 7],
                          "parameters": {"topk": 4}}})
    assert req.protocol == inputs.V1 and req.topk == 4 and req.error is None
    assert req.images[0] == PNG and req.images[2] == PNG
    assert isinstance(req.images[1], inputs.InvalidBase64) and "instances[1]" in str(req.images[1])
    assert isinstance(req.images[3], UnsupportedPayload) and isinstance(req.images[4], UnsupportedPayload)


def test_v2_bytes_tensor_with_id_and_parameters():
    req = parse(v2([B64, B64], id="abc", parameters={"topk": 2}))
    assert (req.protocol, req.request_id, req.input_name, req.topk) == (inputs.V2, "abc", "img", 2)
    assert req.images == [PNG, PNG]


def test_huge_base64_is_refused_before_decoding():
    req = parse({"body": {"b64": "A" * 4000}}, max_bytes=1000)
    assert isinstance(req.images[0], ImageTooLarge)


def test_stock_envelope_rows_are_recognised_and_parsed():
    assert inputs.is_envelope_input({"name": "image", "shape": [1], "datatype": "BYTES", "data": B64})
    assert not inputs.is_envelope_input({"body": PNG})
    assert inputs.is_v1_envelope_instance(B64) and inputs.is_v1_envelope_instance({"b64": B64})
    assert not inputs.is_v1_envelope_instance({"body": {"b64": B64}}) and not inputs.is_v1_envelope_instance({"b64": 3})
    req = inputs.parse_v1_envelope_instance({"data": B64}, 1000, 4)
    assert (req.protocol, req.input_name, req.images) == (inputs.ENVELOPE_V1, "instances[4]", [PNG])
    bad = inputs.parse_envelope_input({"name": "x", "shape": [1], "datatype": "FP32", "data": 1.0}, 1000)
    assert isinstance(bad.error, inputs.MalformedRequest)

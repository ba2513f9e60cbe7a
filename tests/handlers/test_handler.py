"""The TorchServe handler in-process, driven through TorchServe's own Context and RequestProcessor
objects on a real unpacked `.mar` (what the Python worker does, without the Java frontend)."""
import base64
import json

import pytest
from ts.context import Context, RequestProcessor

from handlers.classifier import ImageClassifier
from handlers.torchserve_handler import TorchServeImageClassifier
from tests.helpers import MODEL_NAME, assert_same_topk


@pytest.fixture(scope="module")
def handler_and_context(unpacked_mar, manifest):
    ctx = Context(MODEL_NAME, str(unpacked_mar), manifest, batch_size=8, gpu=None, mms_version="0.12.0")
    handler = TorchServeImageClassifier()
    handler.initialize(ctx)
    return handler, ctx


def run_batch(handler, ctx, rows):
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    out = handler.handle(rows, ctx)
    return out, [ctx.get_response_status(i) for i in range(len(rows))]


def test_handler_returns_topk_for_real_images(handler_and_context, samples, unpacked_mar):
    handler, ctx = handler_and_context
    out_dir, listed = samples
    rows = [{"body": bytearray((out_dir / s["file"]).read_bytes())} for s in listed]
    out, statuses = run_batch(handler, ctx, rows)
    reference = ImageClassifier.load(unpacked_mar)
    assert len(out) == len(listed)
    for result, status, row in zip(out, statuses, rows, strict=True):
        assert status[0] == 200
        assert len(result) == 5 and list(result.values()) == sorted(result.values(), reverse=True)
        assert_same_topk(result, reference.predict([bytes(row["body"])])[0])
    assert json.dumps(out)  # TorchServe serialises the list to JSON


def test_bad_input_in_a_batch_fails_alone(handler_and_context, samples):
    handler, ctx = handler_and_context
    out_dir, listed = samples
    good = (out_dir / listed[0]["file"]).read_bytes()
    rows = [{"body": good}, {"body": b"definitely not an image"}, {"data": good}, {"body": b""}, {}]
    out, statuses = run_batch(handler, ctx, rows)
    assert [s[0] for s in statuses] == [200, 400, 200, 400, 400]
    assert out[1]["reason"] == "invalid_image" and "not an image" in out[1]["error"]
    assert out[3]["reason"] == "empty_input" and out[4]["reason"] == "empty_input"
    assert out[0] == out[2] and listed[0]["label"] in out[0]
    assert all(ctx.get_response_content_type(i) == "application/json" for i in range(len(rows)))


def test_unknown_json_is_rejected_by_name(handler_and_context):
    handler, ctx = handler_and_context
    out, statuses = run_batch(handler, ctx, [{"body": {"pixels": [1, 2]}}, {"body": [1, 2]}])
    assert [s[0] for s in statuses] == [400, 400]
    assert out[0]["reason"] == "unsupported_payload" and "instances" in out[0]["error"]
    assert "list" in out[1]["error"]


def test_each_request_of_a_batch_speaks_its_own_protocol(handler_and_context, samples, unpacked_mar):
    handler, ctx = handler_and_context
    out_dir, listed = samples
    pngs = [(out_dir / s["file"]).read_bytes() for s in listed[:3]]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    rows = [
        {"body": pngs[0]},                                             # raw bytes
        {"file": pngs[1]},                                             # multipart field
        {"body": {"b64": b64[2]}, "topk": b"2"},                       # JSON + ?topk=2
        {"body": {"instances": [{"b64": b64[0]}, {"b64": "%%%"}, b64[1]]}},  # v1, one bad
        {"body": {"id": "r1", "inputs": [{"name": "img", "datatype": "BYTES", "shape": [2],
                                          "data": [b64[0], b64[2]]}], "parameters": {"topk": 3}}},
    ]
    out, statuses = run_batch(handler, ctx, rows)
    assert [s[0] for s in statuses] == [200] * 5
    assert next(iter(out[0])) == listed[0]["label"] and next(iter(out[1])) == listed[1]["label"]
    # ?topk=2: exactly the in-process top 2 (the default k is 5)
    assert len(out[2]) == 2 and next(iter(out[2])) == listed[2]["label"]
    assert_same_topk(out[2], ImageClassifier.load(unpacked_mar).predict([pngs[2]], topk=2)[0])
    preds = out[3]["predictions"]
    assert next(iter(preds[0])) == listed[0]["label"] and next(iter(preds[2])) == listed[1]["label"]
    assert preds[1]["reason"] == "invalid_base64" and preds[1]["error"].startswith("instances[1]")
    assert out[3]["model_version"] == "1.0"
    v2 = out[4]
    assert (v2["id"], v2["model_name"], v2["model_version"]) == ("r1", MODEL_NAME, "1.0")
    labels, probs = v2["outputs"]
    assert labels["shape"] == probs["shape"] == [2, 3] and labels["datatype"] == "BYTES"
    assert labels["data"][0] == listed[0]["label"] and labels["data"][3] == listed[2]["label"]
    assert probs["datatype"] == "FP32" and probs["data"][0] >= probs["data"][1] >= probs["data"][2]
    assert all(ctx.get_response_headers(i)["x-model-version"] == "1.0" for i in range(5))


def test_v2_request_with_a_bad_element_fails_whole_naming_it(handler_and_context, samples):
    handler, ctx = handler_and_context
    out_dir, listed = samples
    good = base64.b64encode((out_dir / listed[0]["file"]).read_bytes()).decode()
    bad = base64.b64encode(b"not an image").decode()
    rows = [{"body": {"inputs": [{"name": "img", "datatype": "BYTES", "shape": [2], "data": [good, bad]}]}},
            {"body": {"inputs": [{"name": "img", "datatype": "FP32", "shape": [1], "data": [0.5]}]}},
            {"body": (out_dir / listed[0]["file"]).read_bytes()}]  # a neighbour in the same batch
    out, statuses = run_batch(handler, ctx, rows)
    assert [s[0] for s in statuses] == [400, 400, 200]
    assert out[0]["error"].startswith("img[1]:") and out[0]["reason"] == "invalid_image"
    assert "BYTES" in out[1]["error"]
    assert next(iter(out[2])) == listed[0]["label"]

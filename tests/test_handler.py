"""The TorchServe handler in-process, driven through TorchServe's own Context and RequestProcessor
objects on a real unpacked `.mar` (what the Python worker does, without the Java frontend)."""
import json

import pytest
from ts.context import Context, RequestProcessor

from handlers.classifier import ImageClassifier
from handlers.torchserve_handler import TorchServeImageClassifier
from tests.conftest import MODEL_NAME, assert_same_topk


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
    for result, status, row in zip(out, statuses, rows):
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


def test_non_bytes_payload_is_rejected_by_name(handler_and_context):
    handler, ctx = handler_and_context
    out, statuses = run_batch(handler, ctx, [{"body": {"instances": []}}])
    assert statuses[0][0] == 400 and out[0]["reason"] == "unsupported_payload" and "dict" in out[0]["error"]

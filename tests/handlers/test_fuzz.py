"""Property-based fuzzing (hypothesis), bounded: the request parsers and the image decoders take any
input and either succeed or raise a typed InputError (the runtime's REST framing: kserve's
InvalidInput) naming the problem; never another exception, which would be a 500. Each run is
capped in examples and derandomized (the same cases every run, no example database), so CI time
is bounded and a failure prints its minimal example, which then becomes an @example here."""
from __future__ import annotations

import base64
import io
import os
import tempfile

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from kserve.errors import InvalidInput
from PIL import Image

from handlers.errors import InputError
from handlers.inputs import ParsedRequest, parse_row
from handlers.preprocess import PreprocessSpec, bytes_to_tensor, decode_image
from scripts.runtime.decode import INFERENCE_HEADER_LENGTH, parse_oip, rest_v2_request

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis-"))  # its caches stay out of the repository
# FUZZ_EXAMPLES=20000 for a longer campaign (README, "Fuzzing": what was run and found)
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
MAX_BYTES, MAX_IMAGES = 4096, 8
KEYS = ["instances", "inputs", "b64", "data", "body", "parameters", "topk", "name", "datatype", "shape", "id",
        "outputs", "binary_data_size"]


def png(size=(3, 2), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 7).save(buf, "PNG")
    return buf.getvalue()


B64_PNG = base64.b64encode(png()).decode()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["BYTES", "FP32", B64_PNG, "AA==", "!!", "3"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=25)


def check_parsed(parsed: ParsedRequest) -> None:
    assert isinstance(parsed, ParsedRequest)
    if parsed.error is not None:
        assert isinstance(parsed.error, InputError) and str(parsed.error)
        assert parsed.error.to_dict()["code"] == parsed.error.status
    else:
        assert 1 <= len(parsed.images) <= MAX_IMAGES
        assert all(isinstance(i, (bytes, InputError)) for i in parsed.images)
        assert all(len(i) <= MAX_BYTES for i in parsed.images if isinstance(i, bytes))


@FUZZ
@given(json_values)
@example({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64_PNG], "parameters": []}]})
@example({"instances": [{"b64": B64_PNG}] * (MAX_IMAGES + 1)})
def test_parse_row_takes_any_json_value(body):
    check_parsed(parse_row({"body": body}, MAX_BYTES, "application/json", max_images=MAX_IMAGES))


@FUZZ
@given(st.binary(max_size=256), st.sampled_from([None, "application/json", "image/png", "text/plain; charset=x"]),
       st.one_of(st.none(), st.text(max_size=6)))
def test_parse_row_takes_any_bytes_content_type_and_topk_header(body, content_type, topk):
    check_parsed(parse_row({"body": body}, MAX_BYTES, content_type, topk, max_images=MAX_IMAGES))


v2_tensors = st.fixed_dictionaries({"name": st.text(max_size=5), "datatype": st.sampled_from(["BYTES", "FP32", "x"]),
                                    "shape": st.lists(st.integers(-1, 9), max_size=3)},
                                   optional={"data": json_values, "parameters": json_values})


@FUZZ
@given(st.fixed_dictionaries({"inputs": st.lists(v2_tensors, max_size=3)},
                             optional={"id": st.text(max_size=4), "parameters": json_values,
                                       "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2)}),
       st.binary(max_size=64), st.one_of(st.none(), st.integers(-3, 400).map(str), st.text(max_size=4)))
def test_a_v2_rest_body_with_binary_data_is_a_request_or_a_named_refusal(header, tail, declared):
    """rest_v2_request (the binary tensor extension) then parse_oip, as the runtime runs them."""
    body = orjson.dumps(header) + tail
    headers = {} if declared is None else {INFERENCE_HEADER_LENGTH: declared}
    try:
        request = rest_v2_request(body, headers, "m")
    except InvalidInput as e:
        assert str(e)
        return
    check_parsed(parse_oip(request, MAX_BYTES, MAX_IMAGES))


SPEC = PreprocessSpec(width=8, height=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def mutated(seed: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    return bytes(data)


def image_seeds() -> list[bytes]:
    out = [png(), png((5, 4), "L"), png((4, 4), "RGBA"), png((2, 3), "I;16")]
    for fmt in ("JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (6, 5), (10, 200, 30)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = image_seeds()


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.integers(0, 64))
def test_the_image_decoders_take_any_corrupted_image(seed, flips, cut):
    """Real images of every accepted format with bytes flipped and the end cut off: a decoded
    image and a finite tensor of the spec's shape, or an InputError; nothing else."""
    data = mutated(seed, flips)
    data = data[:len(data) - cut] if cut < len(data) else data
    try:
        decode_image(data, max_bytes=MAX_BYTES, max_pixels=4096)
        tensor = bytes_to_tensor(data, SPEC, max_bytes=MAX_BYTES, max_pixels=4096)
    except InputError as e:
        assert str(e)
        return
    assert tensor.shape == (3, 8, 8) and bool(tensor.isfinite().all())


@FUZZ
@given(st.binary(max_size=512))
def test_the_image_decoder_takes_any_bytes(data):
    with pytest.raises(InputError):
        if decode_image(data, max_bytes=MAX_BYTES, max_pixels=4096) is not None:
            raise InputError("decoded")  # random bytes that happen to be an image are fine too

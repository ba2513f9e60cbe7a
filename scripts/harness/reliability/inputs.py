"""The requests that must be refused (each with the status, reason and message it must get) and
the valid but odd images that must get the in-process answer; images written byte by byte where
a library would refuse to write them."""
from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A grayscale PNG written chunk by chunk (valid CRCs): any size in the header, all-black
    rows. A 20000×20000 1-bit image is 49 KB on the wire and 400 Mpx once decoded."""
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # {m}: the model
    kwargs: dict
    status: int  # expected
    reason: str = ""  # expected handler reason (4xx from the handler)
    says: str = ""  # a fragment the message must contain: it names the problem
    valid: bytes | None = None  # valid-but-odd image: expect 200 with the in-process answer


def corrupt_dds() -> bytes:
    """A DDS whose pixel-format flags (offset 80) are 0: Pillow's reader raises
    NotImplementedError, outside the errors decoders document (found by fuzzing the decoders)."""
    dds = bytearray(encode(Image.new("RGB", (8, 8), (200, 10, 10)), "DDS"))
    dds[80:84] = bytes(4)
    return bytes(dds)


def bad_input_cases(good: bytes, photo_jpeg: bytes, max_image_bytes: int, max_request_bytes: int,
                    runtime: str = "torchserve") -> list[Case]:
    """Bad requests (4xx expected) and valid-but-odd images (200 expected), from real images, in
    the routes of `runtime`: TorchServe's raw /predictions beside v1 and v2, or the KServe-native
    runtime's v1 and v2 (the same image cases travel as base64 instances there)."""
    img = Image.open(io.BytesIO(good)).convert("L")
    gif = io.BytesIO()
    img.save(gif, "GIF", save_all=True, append_images=[Image.new("L", img.size, 255)], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 8
    rng = np.random.default_rng(7)
    odd = {
        "1x1 PNG": encode(img.resize((1, 1))),
        "1x40000 strip PNG": encode(img.resize((1, 40_000))),
        "16-bit grayscale PNG": encode(Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)),
        "CMYK JPEG": encode(img.convert("CMYK"), "JPEG", quality=100),
        "animated GIF (2 frames)": gif.getvalue(),
        "gray+alpha PNG": encode(img.convert("LA")),
        "EXIF-rotated JPEG": encode(img.rotate(-90, expand=True), "JPEG", quality=100, exif=exif),
        "colour photo JPEG (not clothing)": photo_jpeg,
    }
    raw, json_ct = "/predictions/{m}", {"Content-Type": "application/json"}
    v1, v2 = "/v1/models/{m}:predict", "/v2/models/{m}/infer"

    def v2body(**tensor) -> dict:
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(good)], **tensor}]}

    bad = [
        Case("empty body", raw, {"data": b""}, 400, "empty_input", "no body"),
        Case("text, not an image", raw, {"data": b"hello, this is not an image"}, 400, "invalid_image", "not an image"),
        Case("random bytes", raw, {"data": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()}, 400, "invalid_image", "not an image"),
        Case("truncated JPEG", raw, {"data": photo_jpeg[: len(photo_jpeg) // 2]}, 400, "invalid_image", "truncated"),
        Case("truncated PNG", raw, {"data": good[: len(good) // 2]}, 400, "invalid_image", "could not be decoded"),
        Case("PNG signature only", raw, {"data": good[:8]}, 400, "invalid_image", "image"),
        Case("DDS with pixel-format flags 0 (Pillow raises NotImplementedError)", raw,
             {"data": corrupt_dds()}, 400, "invalid_image", "NotImplementedError"),
        Case("0x0-pixel PNG (header says 0 wide)", raw, {"data": raw_png(0, 1)}, 400, "invalid_image", "not an image"),
        Case("0-byte multipart file", raw, {"files": {"data": ("x.png", b"", "image/png")}}, 400, "empty_input", "no body"),
        Case("multipart without a file", raw, {"files": {"topk": (None, "3")}}, 400, "empty_input", "no body"),
        Case("20000x20000 PNG bomb (49 KB)", raw, {"data": raw_png(20_000, 20_000, bit_depth=1)}, 413, "image_too_large", "pixel"),
        Case("raw image over the byte limit", raw, {"data": good + b"\0" * (max_image_bytes + 1)}, 413, "image_too_large", "byte limit"),
        Case("body over the request-size limit", raw, {"data": b"\0" * (max_request_bytes + 1024)}, 413, "", "Too Large"),
        Case("huge base64 (8.4 MB)", raw, {"json": {"b64": "A" * (max_image_bytes * 4 // 3 + 4096)}}, 413, "image_too_large", "limit"),
        Case("malformed JSON", raw, {"data": b'{"b64": ', "headers": json_ct}, 400, "malformed_request", "not valid JSON"),
        Case("JSON nested 100000 deep", raw, {"data": b"[" * 100_000, "headers": json_ct}, 400, "malformed_request", "not valid JSON"),
        Case("JSON array body", raw, {"json": [1, 2, 3]}, 400, "unsupported_payload", "unsupported request body"),
        Case("JSON object without an image", raw, {"json": {"pixels": [0, 1]}}, 400, "unsupported_payload", "unsupported request body"),
        Case("b64 not base64", raw, {"json": {"b64": "@@ not base64 @@"}}, 400, "invalid_base64", "not valid base64"),
        Case("b64 of non-image bytes", raw, {"json": {"b64": b64(b"hello")}}, 400, "invalid_image", "not an image"),
        Case("b64 is a number", raw, {"json": {"b64": 12345}}, 400, "unsupported_payload", "base64 string"),
        Case("topk not an integer", raw, {"data": good, "headers": {"X-TopK": "many"}}, 400, "invalid_option", "topk"),
        Case("topk out of range", raw, {"data": good, "headers": {"X-TopK": "0"}}, 400, "invalid_option", "topk"),
        Case("v1 instances not a list", v1, {"json": {"instances": "x"}}, 400, "malformed_request", "instances"),
        Case("v1 instances empty", v1, {"json": {"instances": []}}, 400, "malformed_request", "non-empty"),
        Case("v1 65 instances", v1, {"json": {"instances": [b64(good)] * 65}}, 400, "malformed_request", "at most 64"),
        Case("v1 only instance not base64", v1, {"json": {"instances": [{"b64": "@@"}]}}, 400, "invalid_base64", "instances[0]"),
        Case("v1 instance without b64 key", v1, {"json": {"instances": [{"image": b64(good)}]}}, 400, "unsupported_payload", "instances[0]"),
        Case("v1 parameters not an object", v1, {"json": {"instances": [b64(good)], "parameters": "topk=3"}}, 400, "malformed_request", "parameters"),
        Case("v2 datatype FP32", v2, {"json": v2body(datatype="FP32", data=[0.5])}, 400, "malformed_request", "BYTES"),
        Case("v2 shape [3] for 1 element", v2, {"json": v2body(shape=[3])}, 400, "malformed_request", "shape"),
        Case("v2 shape [1,1]", v2, {"json": v2body(shape=[1, 1])}, 400, "malformed_request", "shape"),
        Case("v2 two input tensors", v2, {"json": {"inputs": v2body()["inputs"] * 2}}, 400, "malformed_request", "exactly one"),
        Case("v2 no inputs", v2, {"json": {"inputs": []}}, 400, "malformed_request", "exactly one"),
        Case("v2 data element a number", v2, {"json": v2body(data=[7])}, 400, "unsupported_payload", "base64 string"),
        Case("v2 tensor parameters a list", v2, {"json": v2body(parameters=[3])}, 400, "malformed_request", "parameters"),
        Case("unknown model", "/predictions/no-such-model", {"data": good}, 404, "", "Model not found"),
        Case("unknown version", "/predictions/{m}/9.9", {"data": good}, 404, "", "does not exist"),
        Case("v1 unknown model", "/v1/models/no-such-model:predict", {"json": {"instances": [b64(good)]}}, 404, "", "Model not found"),
    ]
    if runtime == "torchserve":
        return bad + [Case(name, raw, {"data": body}, 200, valid=body) for name, body in odd.items()]
    worded = {"empty body": "empty request body"}  # the runtime names the instance and its problem
    images = [c for c in bad if c.path == raw and "data" in c.kwargs and not c.kwargs.get("headers")
              and c.name != "body over the request-size limit"]
    return [as_v1(c, worded.get(c.name, c.says)) for c in images] + [
        Case("body over the request-size limit", v1, {"data": b"\0" * (max_request_bytes + 1024)}, 413,
             "request_too_large", "-byte limit"),
        Case("malformed JSON", v1, {"data": b'{"instances": ', "headers": json_ct}, 400, "malformed_request",
             "unexpected end of data"),
        Case("JSON nested 100000 deep", v1, {"data": b"[" * 100_000, "headers": json_ct}, 400, "malformed_request",
             "depth limit exceeded"),
        Case("v1 JSON array body", v1, {"json": [1, 2, 3]}, 400, "unsupported_payload", "unsupported request body"),
        Case("v1 b64 is a number", v1, {"json": {"instances": [{"b64": 12345}]}}, 400, "unsupported_payload", "base64 string"),
        Case("topk not an integer", v1, {"json": {"instances": [b64(good)], "parameters": {"topk": "many"}}}, 400,
             "invalid_option", "topk"),
        Case("topk out of range", v1, {"json": {"instances": [b64(good)], "parameters": {"topk": 0}}}, 400,
             "invalid_option", "topk"),
        *[c for c in bad if c.path in (v1, v2) and c.status != 404],
        Case("unknown model", "/v1/models/no-such-model:predict", {"json": {"instances": [b64(good)]}}, 404,
             "", "no-such-model does not exist"),
        Case("v2 unknown model", "/v2/models/no-such-model/infer", {"json": v2body()}, 404, "",
             "no-such-model does not exist"),
        Case("unknown version", "/v2/models/{m}/versions/9.9/infer", {"json": v2body()}, 404, "model_not_found", "9.9"),
    ] + [as_v1(Case(name, raw, {"data": body}, 200, valid=body)) for name, body in odd.items()]


def as_v1(case: Case, says: str | None = None) -> Case:
    """A raw-body image case as the v1 request carrying that image as its one base64 instance."""
    body = case.kwargs["data"]
    return Case(case.name, "/v1/models/{m}:predict", {"json": {"instances": [{"b64": b64(body)}]}}, case.status,
                case.reason, case.says if says is None else says, case.valid)

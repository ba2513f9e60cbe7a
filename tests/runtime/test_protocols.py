"""Every REST protocol × input format against a real TorchServe on loopback: raw bytes, multipart,
JSON base64, KServe v1 (`/v1/models/<m>:predict`) and OIP v2 (`/v2/models/<m>/infer`), all served
by one TorchServe without a `service_envelope`."""
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import MODEL_NAME, assert_same_topk, png_bytes

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def api(torchserve):
    return torchserve.settings.inference_url


@pytest.fixture(scope="module")
def images(samples):
    out_dir, listed = samples
    return [((out_dir / s["file"]).read_bytes(), s["label"]) for s in listed]


@pytest.fixture(scope="module")
def reference(api, images):
    """The native raw-bytes answer for each sample: every other path must agree with it."""
    return [requests.post(f"{api}/predictions/{MODEL_NAME}", data=png, timeout=30).json() for png, _ in images]


def encodings(png: bytes) -> dict[str, bytes]:
    """The same image in the formats clients send (converted from the real PNG)."""
    img = Image.open(io.BytesIO(png))
    return {"png": png, "jpeg": png_bytes(img, "JPEG", quality=95), "webp": png_bytes(img, "WEBP", lossless=True),
            "bmp": png_bytes(img, "BMP"), "tiff": png_bytes(img, "TIFF"), "gif": png_bytes(img, "GIF"),
            "rgba-png": png_bytes(img.convert("RGBA")), "palette-png": png_bytes(img.convert("P"))}


def test_native_raw_bytes_in_every_lossless_format_agree(api, images, reference):
    png, label = images[0]
    for name, body in encodings(png).items():
        if name == "jpeg":
            continue
        got = requests.post(f"{api}/predictions/{MODEL_NAME}", data=body, timeout=30)
        assert got.status_code == 200, name
        assert_same_topk(got.json(), reference[0])
        assert got.headers["x-model-version"] == "1.0"
    jpeg = requests.post(f"{api}/predictions/{MODEL_NAME}", data=encodings(png)["jpeg"], timeout=30).json()
    assert next(iter(jpeg)) == label  # lossy: same answer, not the same bits


def test_native_multipart_and_json_b64_and_topk_header(api, images, reference):
    png, _ = images[1]
    multipart = requests.post(f"{api}/predictions/{MODEL_NAME}", files={"data": ("x.png", png, "image/png")}, timeout=30)
    assert_same_topk(multipart.json(), reference[1])
    as_json = requests.post(f"{api}/predictions/{MODEL_NAME}", json={"b64": b64(png)}, timeout=30)
    assert_same_topk(as_json.json(), reference[1])
    top2 = requests.post(f"{api}/predictions/{MODEL_NAME}", data=png, headers={"X-TopK": "2"}, timeout=30)
    assert list(top2.json()) == list(reference[1])[:2]


def test_kserve_v1_predict_with_a_bad_instance(api, images, reference):
    body = {"instances": [{"b64": b64(images[0][0])}, {"b64": b64(b"junk")}, b64(images[2][0])],
            "parameters": {"topk": 3}}
    r = requests.post(f"{api}/v1/models/{MODEL_NAME}:predict", json=body, timeout=30)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert_same_topk(preds[0], dict(list(reference[0].items())[:3]))
    assert preds[1]["reason"] == "invalid_image" and preds[1]["error"].startswith("instances[1]")
    assert_same_topk(preds[2], dict(list(reference[2].items())[:3]))
    only_bad = requests.post(f"{api}/v1/models/{MODEL_NAME}:predict", json={"instances": ["@@"]}, timeout=30)
    assert only_bad.status_code == 400 and only_bad.json()["reason"] == "invalid_base64"


def test_oip_v2_infer_returns_label_and_probability_tensors(api, images, reference):
    body = {"id": "req-7", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                       "data": [b64(png) for png, _ in images[:3]]}]}
    r = requests.post(f"{api}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert r.status_code == 200
    out = r.json()
    assert (out["id"], out["model_name"], out["model_version"]) == ("req-7", MODEL_NAME, "1.0")
    labels, probs = out["outputs"]
    assert labels["shape"] == probs["shape"] == [3, 5]
    for i in range(3):
        got = dict(zip(labels["data"][i * 5:(i + 1) * 5], probs["data"][i * 5:(i + 1) * 5]))
        assert_same_topk(got, reference[i])


@pytest.mark.parametrize("path, body, status, reason", [
    ("/v2/models/{m}/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400, "malformed_request"),
    ("/v2/models/{m}/infer", {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]}, 400, "malformed_request"),
    ("/v1/models/{m}:predict", {"instances": "not a list"}, 400, "malformed_request"),
    ("/predictions/{m}", {"pixels": [0, 1]}, 400, "unsupported_payload"),
])
def test_wrong_envelopes_get_a_named_4xx(api, path, body, status, reason):
    r = requests.post(api + path.format(m=MODEL_NAME), json=body, timeout=30)
    assert r.status_code == status and r.json()["reason"] == reason


def test_malformed_json_body_is_named(api):
    r = requests.post(f"{api}/predictions/{MODEL_NAME}", data=b'{"b64": ', headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["reason"] == "malformed_request"


def test_mixed_protocols_in_one_server_batch(api, images, reference):
    """Concurrent requests land in the same TorchServe batch; each gets its own answer."""
    png0, png1 = images[0][0], images[1][0]
    calls = [
        ("/predictions/{m}", dict(data=png0)),
        ("/predictions/{m}", dict(data=b"\xff\xd8\xff truncated jpeg")),
        ("/v1/models/{m}:predict", dict(json={"instances": [{"b64": b64(png1)}]})),
        ("/v2/models/{m}/infer", dict(json={"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": [b64(png0)]}]})),
    ] * 2
    with ThreadPoolExecutor(len(calls)) as pool:
        rs = list(pool.map(lambda c: requests.post(api + c[0].format(m=MODEL_NAME), timeout=60, **c[1]), calls))
    assert [r.status_code for r in rs] == [200, 400, 200, 200] * 2
    for i in (0, 4):
        assert_same_topk(rs[i].json(), reference[0])
        assert_same_topk(rs[i + 2].json()["predictions"][0], reference[1])
        assert rs[i + 3].json()["outputs"][0]["data"][0] == next(iter(reference[0]))


def test_decompression_bomb_and_oversized_body_are_refused_and_server_survives(api, images, reference):
    bomb = png_bytes(Image.fromarray(np.zeros((8000, 8000), dtype=np.uint8)))  # 64 Mpx, small file
    r = requests.post(f"{api}/predictions/{MODEL_NAME}", data=bomb, timeout=30)
    assert r.status_code == 413 and r.json()["reason"] == "image_too_large" and "pixel" in r.json()["error"]
    huge = {"b64": "A" * (9 * 1024 * 1024)}
    r = requests.post(f"{api}/predictions/{MODEL_NAME}", json=huge, timeout=60)
    assert r.status_code == 413
    ok = requests.post(f"{api}/predictions/{MODEL_NAME}", data=images[0][0], timeout=30)
    assert ok.status_code == 200
    assert_same_topk(ok.json(), reference[0])


def modes_of(png: bytes) -> dict[str, bytes]:
    """The same real image in the awkward forms clients send: CMYK JPEG, 16-bit PNG, gray+alpha,
    a 2-frame animated GIF (the first frame counts) and an EXIF-rotated JPEG."""
    img = Image.open(io.BytesIO(png)).convert("L")
    sixteen = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
    gif = io.BytesIO()
    img.save(gif, "GIF", save_all=True, append_images=[Image.new("L", img.size, 255)], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90° clockwise; viewers (and we) rotate it back
    rotated = png_bytes(img.rotate(-90, expand=True), "JPEG", quality=100, exif=exif)
    return {"cmyk-jpeg": png_bytes(img.convert("CMYK"), "JPEG", quality=100), "png-16bit": png_bytes(sixteen),
            "png-la": png_bytes(img.convert("LA")), "gif-animated": gif.getvalue(), "jpeg-exif-rotated": rotated}


def test_awkward_modes_are_served_like_in_process(api, images, unpacked_mar):
    from handlers.classifier import ImageClassifier

    reference = ImageClassifier.load(unpacked_mar)
    png, label = images[0]
    for name, body in modes_of(png).items():
        r = requests.post(f"{api}/predictions/{MODEL_NAME}", data=body, timeout=30)
        assert r.status_code == 200, (name, r.text)
        assert_same_topk(r.json(), reference.predict([body])[0])
        if name in ("png-16bit", "png-la", "gif-animated", "jpeg-exif-rotated"):  # upright again: the original answer
            assert next(iter(r.json())) == label, name

"""Integration: a real TorchServe 0.12 (Java frontend + Python worker) on free loopback ports,
serving the `.mar` built by the real archiver."""
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from handlers.classifier import ImageClassifier
from scripts.client.predict import PredictError, predict
from scripts.serve import policy
from scripts.serve.settings import METRIC_REQUESTS_TOTAL
from tests.helpers import IMAGENET_NAME, MODEL_NAME, assert_same_topk, png_bytes

pytestmark = pytest.mark.integration


def url(ts, path=""):
    return f"{ts.settings.inference_url}/predictions/{MODEL_NAME}{path}"


def requests_total(ts) -> float:
    text = requests.get(ts.settings.metrics_url, timeout=10).text
    values = [float(m.group(1)) for m in re.finditer(
        rf'^{METRIC_REQUESTS_TOTAL}\{{[^}}]*model_name="{MODEL_NAME}"[^}}]*\}} ([0-9.eE+]+)$', text, re.M)]
    assert values, f"{METRIC_REQUESTS_TOTAL} for {MODEL_NAME} missing from /metrics"
    return sum(values)


@pytest.fixture(scope="module")
def reference(unpacked_mar) -> ImageClassifier:
    """The served archive's model in-process: what every answer of the server must equal."""
    return ImageClassifier.load(unpacked_mar)


def test_real_images_predicted_as_in_process(torchserve, samples, reference):
    out_dir, listed = samples
    for s in listed:
        body = (out_dir / s["file"]).read_bytes()
        served = predict(body, MODEL_NAME, torchserve.settings.inference_url)
        assert_same_topk(served, reference.predict([body])[0])


def test_bad_image_gets_a_json_4xx_and_the_server_keeps_serving(torchserve, samples, reference):
    out_dir, listed = samples
    bad = requests.post(url(torchserve), data=b"GIF89a but not really", timeout=30)
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/json")
    assert bad.json()["reason"] == "invalid_image"
    empty = requests.post(url(torchserve), data=b"", timeout=30)
    assert empty.status_code == 400 and empty.json()["reason"] == "empty_input"
    body = (out_dir / listed[0]["file"]).read_bytes()
    good = predict(body, MODEL_NAME, torchserve.settings.inference_url)
    assert_same_topk(good, reference.predict([body])[0])


def test_concurrent_requests_with_a_bad_one_each_get_their_own_answer(torchserve, samples, reference):
    out_dir, listed = samples
    good = [(out_dir / s["file"]).read_bytes() for s in listed[:7]]
    bodies = good[:3] + [b"\x89PNG\r\n\x1a\n truncated"] + good[3:]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: requests.post(url(torchserve), data=b, timeout=60), bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200, 200]
    assert responses[3].json()["reason"] == "invalid_image"
    answers = [r.json() for r in responses if r.status_code == 200]
    expected = reference.predict(good)  # in-process, not the same server asked again
    assert all(a != b for i, a in enumerate(expected) for b in expected[i + 1:])  # a swap would show
    for answer, own in zip(answers, expected, strict=True):  # each answer belongs to its own request
        assert_same_topk(answer, own)


def test_predict_client_raises_the_servers_message(torchserve):
    with pytest.raises(PredictError, match="HTTP 400.*not an image"):
        predict(b"nope", MODEL_NAME, torchserve.settings.inference_url)
    with pytest.raises(PredictError, match="HTTP 404"):
        predict(b"nope", "no-such-model", torchserve.settings.inference_url)


def test_inference_requests_are_counted_in_prometheus_metrics(torchserve, samples):
    out_dir, listed = samples
    before = requests_total(torchserve)
    for s in listed[:3]:
        predict((out_dir / s["file"]).read_bytes(), MODEL_NAME, torchserve.settings.inference_url)
    assert requests_total(torchserve) == before + 3


def test_model_is_described_with_a_ready_worker(torchserve):
    (described,) = torchserve.model_status(MODEL_NAME)
    assert described["modelVersion"] == "1.0"
    # the light policy's two worker processes (scripts/serve/policy.py)
    assert [w["status"] for w in described["workers"]] == ["READY"] * policy.LIGHT.torchserve_worker_count
    assert described["batchSize"] == 8 and described["maxBatchDelay"] == 0


def test_cors_allows_the_try_it_page_only(torchserve):
    origin = torchserve.settings.allowed_origin
    ok = requests.options(url(torchserve), headers={"Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=10)
    assert ok.headers.get("access-control-allow-origin") == origin
    other = requests.options(url(torchserve), headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert other.headers.get("access-control-allow-origin") in (None, origin)  # never the foreign one


def test_imagenet_model_is_served_beside_the_custom_one(torchserve):
    from PIL import Image
    from skimage import data as skdata

    cat = png_bytes(Image.fromarray(skdata.chelsea()), "JPEG", quality=90)
    top = predict(cat, IMAGENET_NAME, torchserve.settings.inference_url)
    assert next(iter(top)) in {"tabby", "tiger cat", "Egyptian cat"}, top
    (described,) = torchserve.model_status(IMAGENET_NAME)
    assert [w["status"] for w in described["workers"]] == ["READY"]

"""Handler metrics: recorded per batch in-process, and exported by a real TorchServe's /metrics
with the names and labels of handlers/metrics.py: by the frontend where TorchServe runs alone (a
stock image); tests/handlers/test_exporter.py has TorchServe under our exporter."""
import time
from collections import Counter
from types import SimpleNamespace

import prometheus_client
import pytest
import requests

from handlers import metrics as m
from handlers.classifier import ImageClassifier
from handlers.errors import EmptyInput
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import MODEL_NAME, metric_value as value


def test_predict_fills_the_observation(unpacked_mar, samples):
    out_dir, listed = samples
    clf = ImageClassifier.load(unpacked_mar)
    obs = m.Observation()
    good = [(out_dir / s["file"]).read_bytes() for s in listed[:3]]
    results = clf.predict(good + [b"junk", EmptyInput("none")], obs=obs)
    assert obs.batch_size == 3
    assert set(obs.seconds) == {"preprocess", "inference", "postprocess"} and all(v > 0 for v in obs.seconds.values())
    assert obs.predicted == Counter(next(iter(r)) for r in results[:3])
    assert obs.rejected == {"invalid_image": 1, "empty_input": 1}


def test_prometheus_backend_uses_the_same_names_and_labels():
    registry = prometheus_client.CollectorRegistry()
    sink = m.PrometheusMetrics("mnist", "2.0", registry)
    sink.record(m.Observation(seconds={"inference": 0.02}, batch_size=4,
                              predicted={"Bag": 3}, rejected={"invalid_image": 1}))
    sink.model_loaded(1.5, SimpleNamespace(format="onnx", source={"run_id": "0a1b"}))
    text = prometheus_client.generate_latest(registry).decode()
    labels = {"ModelName": "mnist", "ModelVersion": "2.0", "Level": "Model"}
    assert value(text, f"{m.STAGE_SECONDS}_count", **labels, stage="inference") == 1
    assert value(text, m.PREDICTIONS, **labels, label="Bag") == 3
    assert value(text, m.REJECTED, **labels, reason="invalid_image") == 1
    assert value(text, f"{m.BATCH_SIZE}_sum", **labels) == 4
    assert value(text, m.MODEL_LOAD_SECONDS, **labels) == 1.5
    assert value(text, m.MODEL_INFO, **labels, format="onnx", run_id="0a1b") == 1
    assert all('Hostname="' in line for line in text.splitlines() if line.startswith("image_handler"))


def scrape(ts) -> str:
    return requests.get(f"http://127.0.0.1:{ts.settings.frontend_metrics_port}/metrics", timeout=10).text


@pytest.fixture(scope="module")
def stock_torchserve(store, tmp_path_factory):
    """TorchServe without the exporter: the handler's metrics go through the frontend."""
    ts = TorchServe(store, loopback_settings(), tmp_path_factory.mktemp("ts-stock"), exporter=False)
    ts.start(timeout=180)
    yield ts
    ts.stop()


@pytest.mark.integration
def test_torchserve_alone_exports_handler_metrics(stock_torchserve, samples):
    torchserve = stock_torchserve
    out_dir, listed = samples
    url = f"{torchserve.settings.inference_url}/predictions/{MODEL_NAME}"
    before = scrape(torchserve)
    png = (out_dir / listed[0]["file"]).read_bytes()
    for _ in range(3):
        assert requests.post(url, data=png, timeout=30).status_code == 200
    assert requests.post(url, data=b"junk", timeout=30).status_code == 400
    assert requests.post(url, json={"nothing": 1}, timeout=30).status_code == 400
    labels = {"ModelName": MODEL_NAME, "ModelVersion": "1.0"}
    # The frontend reads the worker's metric lines from its output stream, after the answer has
    # gone: wait until the five handler calls are in (or 30 s), then check every count exactly
    deadline = time.monotonic() + 30
    while True:
        after = scrape(torchserve)
        handled = value(after, f"{m.STAGE_SECONDS}_count", **labels, stage="handle")
        if handled - value(before, f"{m.STAGE_SECONDS}_count", **labels, stage="handle") >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    delta = lambda name, **kw: value(after, name, **labels, **kw) - value(before, name, **labels, **kw)  # noqa: E731
    assert delta(m.PREDICTIONS, label=listed[0]["label"]) == 3
    assert delta(m.REJECTED, reason="invalid_image") == 1
    assert delta(m.REJECTED, reason="unsupported_payload") == 1
    assert delta(f"{m.STAGE_SECONDS}_count", stage="handle") == 5
    assert delta(f"{m.STAGE_SECONDS}_count", stage="inference") == 3
    assert delta(f"{m.BATCH_SIZE}_sum") == 3
    assert value(after, m.MODEL_LOAD_SECONDS, **labels) > 0
    # the frontend's histograms: TorchServe 0.12's fixed default buckets, 5 ms the finest
    stage_buckets = [line for line in after.splitlines() if line.startswith(f"{m.STAGE_SECONDS}_bucket")]
    assert any('le="0.005"' in line for line in stage_buckets)
    assert not any('le="0.00063"' in line for line in stage_buckets)

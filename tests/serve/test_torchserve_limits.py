"""The chart's limits reach a real TorchServe the way its pod gets them: TS_MAX_REQUEST_SIZE and
TS_JOB_QUEUE_SIZE for the frontend (config.properties keys as variables), SERVE_MAX_IMAGES_PER_REQUEST
for our handler in the worker (handlers/settings.py RequestLimits)."""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import IMAGENET_NAME, MODEL_NAME

pytestmark = pytest.mark.integration

MAX_BYTES = 1_000_000  # room for the photo below as base64
ENV = {"TS_MAX_REQUEST_SIZE": str(MAX_BYTES), "TS_JOB_QUEUE_SIZE": "1", "SERVE_MAX_IMAGES_PER_REQUEST": "2"}


@pytest.fixture(scope="module")
def limited(store, tmp_path_factory):
    ts = TorchServe(store, loopback_settings(), tmp_path_factory.mktemp("ts-limits"), extra_env=ENV)
    ts.start(timeout=180)
    yield ts
    ts.stop()


def v1_body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def predict(ts: TorchServe, model: str, body: bytes) -> requests.Response:
    return requests.post(f"{ts.settings.inference_url}/v1/models/{model}:predict", data=body,
                         headers={"Content-Type": "application/json"}, timeout=60)


def test_the_frontend_refuses_a_body_over_ts_max_request_size(limited, images):
    assert predict(limited, MODEL_NAME, v1_body(images[:1])).status_code == 200
    r = predict(limited, MODEL_NAME, b'{"instances": ["' + b"A" * MAX_BYTES + b'"]}')
    assert r.status_code == 413


def test_the_handler_caps_images_per_request_from_its_environment(limited, images):
    r = predict(limited, MODEL_NAME, v1_body(images[:3]))
    assert r.status_code == 400 and "at most 2 instances per request, got 3" in r.json()["error"]
    assert len(predict(limited, MODEL_NAME, v1_body(images[:2])).json()["predictions"]) == 2


def test_a_burst_beyond_ts_job_queue_size_gets_503(limited, chelsea):
    body = v1_body([chelsea])
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: predict(limited, IMAGENET_NAME, body).status_code, range(6)))
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses

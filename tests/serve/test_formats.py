"""One checkpoint archived in each format (eager, TorchScript, ONNX) and served side by side by a
real TorchServe and the KServe-native runtime: every format answers every protocol like the
eager network in-process, refuses bad input with the same error, and exports the same metrics.
The ImageNet model in ONNX runs the same check on real photos."""
from __future__ import annotations

import pytest
import requests
from PIL import Image
from skimage import data as skdata

from handlers import metrics as m
from handlers.classifier import ImageClassifier
from model import checkpoint
from scripts.client import wire
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import assert_same_topk, metric_value, png_bytes

pytestmark = pytest.mark.integration
FORMATS = ("eager", "torchscript", "onnx")
TOLERANCE = 1e-4  # probability difference between formats (fp32 kernels differ)
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def name(fmt: str) -> str:
    return f"fashion-{fmt}"


@pytest.fixture(scope="module")
def formats_store(trained, imagenet_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats")
    for fmt in FORMATS:
        archive.archive(trained, out, name(fmt), fmt=fmt)
    archive.archive(imagenet_checkpoint, out, "imagenet-onnx", fmt="onnx")
    return out


@pytest.fixture(scope="module")
def servers(formats_store, tmp_path_factory):
    ts = TorchServe(formats_store, loopback_settings(), tmp_path_factory.mktemp("ts-formats"))
    rt = KServeRuntime(formats_store / "model-store", tmp_path_factory.mktemp("rt-formats"), *free_ports(2))
    try:
        ts.start(timeout=240)
        rt.start()
        yield ts, rt
    finally:
        rt.stop()
        ts.stop()


@pytest.fixture(scope="module")
def eager(trained, imagenet_checkpoint) -> dict[str, ImageClassifier]:
    """The checkpoints' eager networks in-process: the answers every format must give."""
    out = {}
    for key, path in (("fashion", trained), ("imagenet", imagenet_checkpoint)):
        ckpt = checkpoint.load(path)
        spec, _, _ = archive.model_spec_from_checkpoint(ckpt, key, "1.0")
        out[key] = ImageClassifier(checkpoint.build_net(ckpt), spec)
    return out


def answers(servers, model: str, images: list[bytes]) -> dict[str, list[dict]]:
    """Each image's top-k through every protocol of both runtimes."""
    ts, rt = servers
    return {"torchserve rest": [wire.rest_native(ts.settings.inference_url, model, img) for img in images],
            "kserve v1 rest": wire.rest_v1(rt.url, model, images),
            "kserve v2 rest": wire.rest_v2(rt.url, model, images),
            "kserve v2 grpc": wire.grpc_oip(rt.grpc_target, model, images)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_answers_like_the_eager_network_on_both_runtimes(servers, eager, images, fmt):
    expected = eager["fashion"].predict(images)
    for path, got in answers(servers, name(fmt), images).items():
        assert len(got) == len(images), path
        for g, e in zip(got, expected):
            assert_same_topk(g, e, abs_tol=TOLERANCE)


def test_the_imagenet_model_in_onnx_names_the_cat_like_the_eager_network(servers, eager):
    photos = [png_bytes(Image.fromarray(getattr(skdata, n)()).convert("RGB")) for n in ("chelsea", "coffee")]
    expected = eager["imagenet"].predict(photos)
    assert next(iter(expected[0])) in CATS
    for path, got in answers(servers, "imagenet-onnx", photos).items():
        for g, e in zip(got, expected):
            assert_same_topk(g, e, abs_tol=TOLERANCE)


def test_every_format_refuses_bad_input_with_the_same_error(servers):
    ts, rt = servers
    seen = set()
    for fmt in FORMATS:
        native = requests.post(f"{ts.settings.inference_url}/predictions/{name(fmt)}", data=b"junk", timeout=30)
        v2 = requests.post(f"{rt.url}/v2/models/{name(fmt)}/infer", timeout=30, json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["junk"]}]})
        assert (native.status_code, v2.status_code) == (400, 400), (native.text, v2.text)
        seen.add((native.json()["error"], v2.json()["error"]))
    assert len(seen) == 1, seen  # the error does not depend on the format


def test_every_format_exports_the_same_handler_metrics_on_both_runtimes(servers, images):
    ts, rt = servers
    for fmt in FORMATS:
        wire.rest_native(ts.settings.inference_url, name(fmt), images[0])
        wire.rest_v2(rt.url, name(fmt), images[:1])
    scraped = {"torchserve": requests.get(ts.settings.metrics_url, timeout=10).text,
               "kserve": requests.get(rt.metrics_url, timeout=10).text}
    for runtime, text in scraped.items():
        for fmt in FORMATS:
            count = metric_value(text, f"{m.STAGE_SECONDS}_count", ModelName=name(fmt), stage="inference")
            assert count >= 1, (runtime, fmt)
            assert metric_value(text, m.MODEL_LOAD_SECONDS, ModelName=name(fmt)) > 0, (runtime, fmt)

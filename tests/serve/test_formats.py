"""One checkpoint archived in each format (eager, TorchScript, ONNX, ONNX int8) and served side by
side by a real TorchServe and the KServe-native runtime: every fp32 format answers every protocol
like the eager network in-process, int8 like its own archive in-process and close to the eager
network; all refuse bad input with the same error and export the same metrics. The ImageNet
model in ONNX and int8 runs the same checks on real photos."""
from __future__ import annotations

import pytest
import requests
from PIL import Image
from skimage import data as skdata

from handlers import metrics as m
from handlers.classifier import ImageClassifier
from model import checkpoint, export
from scripts.client import wire
from scripts.harness.bench.targets import load_inprocess
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import loopback_settings
from scripts.serve.torchserve import TorchServe
from tests.helpers import assert_same_topk, metric_value, png_bytes

pytestmark = pytest.mark.integration
FORMATS = ("eager", "torchscript", "onnx")
INT8 = "onnx-int8"
TOLERANCE = 1e-4  # probability difference between formats (fp32 kernels differ)
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def name(fmt: str) -> str:
    return f"fashion-{fmt}"


@pytest.fixture(scope="module")
def formats_store(trained, imagenet_checkpoint, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats")
    for fmt in (*FORMATS, INT8):
        archive.archive(trained, out, name(fmt), fmt=fmt, data_dir=data_dir)
    archive.archive(imagenet_checkpoint, out, "imagenet-onnx", fmt="onnx")
    archive.archive(imagenet_checkpoint, out, "imagenet-onnx-int8", fmt=INT8)
    return out


@pytest.fixture(scope="module")
def int8_inprocess(formats_store, tmp_path_factory) -> dict[str, ImageClassifier]:
    """The int8 archives unpacked and run in-process: the answers the servers must give."""
    store = formats_store / "model-store"
    return {key: load_inprocess(store / f"{served}.mar", tmp_path_factory.mktemp(f"unpacked-{key}"))
            for key, served in (("fashion", name(INT8)), ("imagenet", "imagenet-onnx-int8"))}


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


def test_int8_answers_like_its_archive_in_process_and_close_to_the_eager_network(servers, eager, int8_inprocess,
                                                                                images):
    own = int8_inprocess["fashion"].predict(images)
    for path, got in answers(servers, name(INT8), images).items():
        assert len(got) == len(images), path
        for g, e in zip(got, own):
            assert_same_topk(g, e, abs_tol=TOLERANCE)
    # one real test image per class: int8 names the same class as fp32, probabilities within its tolerance
    for q, e in zip(own, eager["fashion"].predict(images)):
        assert next(iter(q)) == next(iter(e))
        assert q[next(iter(e))] == pytest.approx(e[next(iter(e))], abs=export.INT8_TOLERANCE)


def test_the_imagenet_model_in_int8_still_names_the_cat_and_the_coffee(servers, eager, int8_inprocess):
    photos = [png_bytes(Image.fromarray(getattr(skdata, n)()).convert("RGB")) for n in ("chelsea", "coffee")]
    _, coffee = eager["imagenet"].predict(photos)
    own = int8_inprocess["imagenet"].predict(photos)
    assert next(iter(own[0])) in CATS and next(iter(own[1])) == next(iter(coffee))
    for path, got in answers(servers, "imagenet-onnx-int8", photos).items():
        for g, e in zip(got, own):
            assert_same_topk(g, e, abs_tol=TOLERANCE)


def test_every_format_refuses_bad_input_with_the_same_error(servers):
    ts, rt = servers
    seen = set()
    for fmt in (*FORMATS, INT8):
        native = requests.post(f"{ts.settings.inference_url}/predictions/{name(fmt)}", data=b"junk", timeout=30)
        v2 = requests.post(f"{rt.url}/v2/models/{name(fmt)}/infer", timeout=30, json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["junk"]}]})
        assert (native.status_code, v2.status_code) == (400, 400), (native.text, v2.text)
        seen.add((native.json()["error"], v2.json()["error"]))
    assert len(seen) == 1, seen  # the error does not depend on the format


def test_every_format_exports_the_same_handler_metrics_on_both_runtimes(servers, images):
    ts, rt = servers
    for fmt in (*FORMATS, INT8):
        wire.rest_native(ts.settings.inference_url, name(fmt), images[0])
        wire.rest_v2(rt.url, name(fmt), images[:1])
    scraped = {"torchserve": requests.get(ts.settings.metrics_url, timeout=10).text,
               "kserve": requests.get(rt.metrics_url, timeout=10).text}
    for runtime, text in scraped.items():
        for fmt in (*FORMATS, INT8):
            count = metric_value(text, f"{m.STAGE_SECONDS}_count", ModelName=name(fmt), stage="inference")
            assert count >= 1, (runtime, fmt)
            assert metric_value(text, m.MODEL_LOAD_SECONDS, ModelName=name(fmt)) > 0, (runtime, fmt)

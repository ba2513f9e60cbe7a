"""Triton's own client, tritonclient, against the KServe-native runtime: REST with binary and JSON
inputs and outputs (the binary tensor extension), gRPC with raw contents, and what it calls on the
way (readiness, server and model metadata), for both models, with real images; bad images get
their per-image errors. tritonclient runs in its own process (scripts/client/triton.py: its
protos and kserve's cannot share one), all calls in one run, each test reading its own."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from tests.helpers import IMAGENET_NAME, MODEL_NAME, assert_same_topk, png_bytes

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("labels", "probabilities")
REST_FORMS = [(binary_in, binary_out) for binary_in in (True, False) for binary_out in (True, False, None)]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [png_bytes(Image.fromarray(skdata.chelsea())),
            png_bytes(Image.fromarray(skdata.coffee()), "JPEG", quality=90)]


@pytest.fixture(scope="module")
def model_images(images, photos) -> dict[str, list[bytes]]:
    """Two real images of each model's kind."""
    return {MODEL_NAME: images[:2], IMAGENET_NAME: photos}


def b64(images: list[bytes]) -> list[str]:
    return [base64.b64encode(i).decode() for i in images]


@pytest.fixture(scope="module")
def calls(runtime, model_images, images) -> dict[str, dict]:
    """Every call below, through tritonclient in one subprocess; results by case name."""
    cases = {}
    for model, imgs in model_images.items():
        for binary_in, binary_out in REST_FORMS:
            cases[f"rest-{model}-{binary_in}-{binary_out}"] = {
                "call": "infer", "protocol": "rest", "model": model, "images": b64(imgs),
                "binary_in": binary_in, "binary_out": binary_out}
        cases[f"grpc-{model}"] = {"call": "infer", "protocol": "grpc", "model": model, "images": b64(imgs)}
    cases["rest-one-output"] = {"call": "infer", "protocol": "rest", "model": MODEL_NAME, "images": b64(images[:1]),
                                "binary_out": True, "outputs": ["labels"]}
    for protocol in ("rest", "grpc"):
        cases[f"{protocol}-bad-image"] = {"call": "infer", "protocol": protocol, "model": MODEL_NAME,
                                          "images": b64([images[0], b"junk"])}
        cases[f"{protocol}-metadata"] = {"call": "metadata", "protocol": protocol, "models": [MODEL_NAME, IMAGENET_NAME]}
        cases[f"{protocol}-config"] = {"call": "model_config", "protocol": protocol, "model": MODEL_NAME}
    proc = subprocess.run([sys.executable, "-m", "scripts.client.triton", "--url", runtime.url.removeprefix("http://"),
                           "--grpc-target", runtime.grpc_target, "--cases", "-"], input=json.dumps(list(cases.values())),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return dict(zip(cases, json.loads(proc.stdout), strict=True))


@pytest.mark.parametrize("model", [MODEL_NAME, IMAGENET_NAME])
@pytest.mark.parametrize("binary_in, binary_out", REST_FORMS,
                         ids=[f"{'binary' if i else 'json'}-in-{'default' if o is None else 'binary' if o else 'json'}-out"
                              for i, o in REST_FORMS])
def test_rest_inputs_and_outputs_binary_or_json(calls, local, model_images, model, binary_in, binary_out):
    result = calls[f"rest-{model}-{binary_in}-{binary_out}"]
    assert "error" not in result, result
    for got, want in zip(result["topk"], local[model].predict(model_images[model]), strict=True):
        assert_same_topk(got, want)
    # no outputs named: tritonclient asks for binary_data_output, so binary too
    assert result["forms"] == dict.fromkeys(OUTPUTS, "json" if binary_out is False else "binary")


def test_rest_one_output_of_two(calls, local, images):
    result = calls["rest-one-output"]
    assert result["forms"] == {"labels": "binary"}
    assert result["labels"] == [list(local[MODEL_NAME].predict(images[:1])[0])]


@pytest.mark.parametrize("model", [MODEL_NAME, IMAGENET_NAME])
def test_grpc_answers_in_raw_output_contents(calls, local, model_images, model):
    result = calls[f"grpc-{model}"]
    assert "error" not in result, result
    assert result["forms"] == dict.fromkeys(OUTPUTS, "raw")
    for got, want in zip(result["topk"], local[model].predict(model_images[model]), strict=True):
        assert_same_topk(got, want)


def test_imagenet_sees_the_cat_through_tritonclient(calls):
    for protocol in ("rest", "grpc"):
        key = f"rest-{IMAGENET_NAME}-True-None" if protocol == "rest" else f"grpc-{IMAGENET_NAME}"
        assert "Egyptian cat" in list(calls[key]["topk"][0])[:2]


@pytest.mark.parametrize("protocol, status", [("rest", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")])
def test_a_bad_image_is_named_by_its_index(calls, protocol, status):
    result = calls[f"{protocol}-bad-image"]
    assert result["status"] == status and "image[1]: body is not an image" in result["error"], result


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_readiness_and_metadata_in_the_shape_tritonclient_reads(calls, protocol):
    meta = calls[f"{protocol}-metadata"]
    assert meta["live"] and meta["ready"] and meta["server_name"]
    unknown = False if protocol == "rest" else "StatusCode.NOT_FOUND"  # kserve's gRPC answer
    assert meta["model_ready"] == {MODEL_NAME: True, IMAGENET_NAME: True, "no-such-model": unknown}
    for name in (MODEL_NAME, IMAGENET_NAME):
        model = meta["models"][name]
        assert (model["name"], model["versions"], model["platform"]) == (name, ["1.0"], "pytorch")
        assert model["inputs"] == [["image", "BYTES"]]
        assert model["outputs"] == [["labels", "BYTES"], ["probabilities", "FP32"]]


def test_model_config_is_a_clear_not_supported(calls):
    rest, grpc = calls["rest-config"], calls["grpc-config"]
    assert rest["status"] == "404" and "Triton extension this runtime does not serve" in rest["error"], rest
    assert grpc["status"] == "StatusCode.UNIMPLEMENTED", grpc  # a method the standard OIP proto lacks


@pytest.mark.parametrize("flags", [[], ["--json"], ["--protocol", "grpc"]], ids=["rest-binary", "rest-json", "grpc"])
def test_the_command_line_prints_each_images_top_k(runtime, samples, local, flags):
    out_dir, listed = samples
    paths = [out_dir / s["file"] for s in listed[:2]]
    proc = subprocess.run([sys.executable, "-m", "scripts.client.triton", *map(str, paths), "--model", MODEL_NAME,
                           "--url", runtime.url.removeprefix("http://"), "--grpc-target", runtime.grpc_target, *flags],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for path, line in zip(paths, lines):
        top1 = next(iter(local[MODEL_NAME].predict([path.read_bytes()])[0]))
        assert line.startswith(f"{path}: {top1} ")


def test_the_command_line_names_a_refused_image_and_fails(runtime, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    proc = subprocess.run([sys.executable, "-m", "scripts.client.triton", str(junk), "--url",
                           runtime.url.removeprefix("http://")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "image[0]: body is not an image" in proc.stderr, proc.stderr
    missing = subprocess.run([sys.executable, "-m", "scripts.client.triton", str(tmp_path / "none.png")],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 2 and "none.png" in missing.stderr

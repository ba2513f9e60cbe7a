"""ImageClassifier's ways of running (handlers/accel.py options) on the CPU, against the default
path on real photos and real Fashion-MNIST images: the tensor path (torchvision.io decode +
tensor resize, what a GPU runs), channels_last, bf16 and torch.compile. Stated tolerance: the
same top-1 (unless the default path's own top two are that close), probabilities within 0.02
(0.05 for bf16's 8-bit mantissa)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from handlers.accel import InferenceOptions
from handlers.classifier import ImageClassifier
from handlers.errors import InvalidImage
from scripts.harness.reliability.inputs import corrupt_dds
from tests.helpers import IMAGENET_NAME, MODEL_NAME, png_bytes


@pytest.fixture(scope="module")
def model_dirs(store, tmp_path_factory) -> dict:
    out = {}
    for name in (MODEL_NAME, IMAGENET_NAME):
        target = tmp_path_factory.mktemp(f"unpacked-{name}")
        with zipfile.ZipFile(store / "model-store" / f"{name}.mar") as z:
            z.extractall(target)
        out[name] = target
    return out


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    out = []
    for arr in (skdata.chelsea(), skdata.coffee(), skdata.astronaut()):
        out += [png_bytes(Image.fromarray(arr), "JPEG", quality=90), png_bytes(Image.fromarray(arr))]
    return out


@pytest.fixture(scope="module")
def fmnist_images(samples) -> list[bytes]:
    folder, rows = samples
    return [(folder / r["file"]).read_bytes() for r in rows]


def assert_close(got: list, reference: list, tol: float) -> None:
    """Probabilities within `tol`, and the same top-1 unless the reference itself is a near-tie
    (within `tol`) between the two labels."""
    for g, r in zip(got, reference, strict=True):
        top = next(iter(g))
        assert top == next(iter(r)) or r.get(top, 0.0) >= max(r.values()) - tol, (g, r)
        for label in set(g) & set(r):
            assert g[label] == pytest.approx(r[label], abs=tol), (label, g, r)


CPU_VARIANTS = {
    "tensor-decode": (InferenceOptions(device="cpu", tensor_decode=True), 0.02),
    "channels-last": (InferenceOptions(device="cpu", channels_last=True), 1e-4),
    "tensor-decode+channels-last+bf16": (InferenceOptions(device="cpu", tensor_decode=True, channels_last=True,
                                                          precision="bf16"), 0.05),
}


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_each_way_of_running_agrees_with_the_default_path(variant, model_dirs, photos, fmnist_images):
    options, tol = CPU_VARIANTS[variant]
    for name, images in ((IMAGENET_NAME, photos), (MODEL_NAME, fmnist_images)):
        reference = ImageClassifier.load(model_dirs[name], options=InferenceOptions(device="cpu"))
        assert not reference.options.tensor_decode and reference.options.dtype == torch.float32
        fast = ImageClassifier.load(model_dirs[name], options=options)
        assert_close(fast.predict(images), reference.predict(images), tol)


def test_the_tensor_path_keeps_bad_and_odd_inputs_per_slot(model_dirs, photos):
    """In one batch: a corrupt JPEG (tensor path) fails alone, a CMYK JPEG and an RGBA PNG (PIL
    path) are answered exactly as the default path answers them."""
    fast = ImageClassifier.load(model_dirs[IMAGENET_NAME], options=InferenceOptions(device="cpu", tensor_decode=True))
    default = ImageClassifier.load(model_dirs[IMAGENET_NAME], options=InferenceOptions(device="cpu"))
    cat = Image.fromarray(skdata.chelsea())
    corrupt = bytearray(photos[0])
    corrupt[400:4000] = b"\x00" * 3600
    odd = [png_bytes(cat.convert("CMYK"), "JPEG"), png_bytes(cat.convert("RGBA"))]
    got = fast.predict([photos[0], bytes(corrupt), *odd])
    assert isinstance(got[1], InvalidImage) and "could not be decoded" in str(got[1])
    assert got[2:] == default.predict(odd)
    assert_close(got[:1], default.predict(photos[:1]), 0.02)


@pytest.mark.parametrize("tensor_decode", [False, True])
def test_a_decoder_raising_outside_its_errors_fails_only_its_own_slot(model_dirs, fmnist_images, tensor_decode):
    """Pillow's DDS reader raises NotImplementedError for a header with pixel-format flags 0 (a
    fuzzing find): that image is a 400 of its own, its batch neighbours are still answered."""
    clf = ImageClassifier.load(model_dirs[MODEL_NAME],
                               options=InferenceOptions(device="cpu", tensor_decode=tensor_decode))
    got = clf.predict([fmnist_images[0], corrupt_dds(), fmnist_images[1]])
    assert isinstance(got[1], InvalidImage) and "NotImplementedError" in str(got[1]), got[1]
    assert got[0] == clf.predict(fmnist_images[:1])[0] and got[2] == clf.predict(fmnist_images[1:2])[0]


def test_torch_compile_gives_the_same_answers(model_dirs, fmnist_images):
    compiled = ImageClassifier.load(model_dirs[MODEL_NAME], options=InferenceOptions(device="cpu", compile=True))
    default = ImageClassifier.load(model_dirs[MODEL_NAME], options=InferenceOptions(device="cpu"))
    assert compiled.forward is not compiled.net
    assert_close(compiled.predict(fmnist_images), default.predict(fmnist_images), 1e-4)


def test_options_come_from_the_environment_unless_a_device_is_given(model_dirs, monkeypatch):
    monkeypatch.setenv("SERVE_TENSOR_DECODE", "true")
    monkeypatch.setenv("SERVE_PRECISION", "bf16")
    c = ImageClassifier.load(model_dirs[MODEL_NAME])
    assert c.options.tensor_decode and c.options.dtype == torch.bfloat16
    assert next(c.net.parameters()).dtype == torch.bfloat16
    assert ImageClassifier.load(model_dirs[MODEL_NAME], device="cpu").device == torch.device("cpu")
    monkeypatch.setenv("SERVE_PRECISION", "fp8")
    with pytest.raises(ValueError, match="SERVE_PRECISION"):
        ImageClassifier.load(model_dirs[MODEL_NAME])


def test_a_gray_photo_and_a_tiny_image_take_the_tensor_path_too(model_dirs):
    fast = ImageClassifier.load(model_dirs[MODEL_NAME], options=InferenceOptions(device="cpu", tensor_decode=True))
    default = ImageClassifier.load(model_dirs[MODEL_NAME], options=InferenceOptions(device="cpu"))
    images = [png_bytes(Image.fromarray(skdata.camera())), png_bytes(Image.fromarray(np.full((1, 1), 200, np.uint8)))]
    assert_close(fast.predict(images), default.predict(images), 0.02)

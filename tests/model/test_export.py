"""model/export.py: every architecture of the registry exports to TorchScript and ONNX with the
eager network's answers on real photos, and to int8 within its tolerance; the CLI writes the
network and its description (with the accuracy on labelled test images); a network that does not
export, or exports to something else, is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from handlers.preprocess import PreprocessSpec, image_to_tensor
from model import export, nets

SIDE = 32  # the smallest input every backbone takes (ViT's grid is resized inside the model)
PHOTO = PreprocessSpec(height=SIDE, width=SIDE, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SMALL = {"wide_resnet": {"depth": 10, "widen": 1, "flip_tta": True}, "small_cnn": {"flip_tta": True}}


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Real photographs, normalized as served."""
    return torch.stack([image_to_tensor(Image.fromarray(getattr(skdata, n)()).convert("RGB"), PHOTO)
                        for n in ("chelsea", "coffee", "astronaut", "rocket")])


@pytest.mark.integration  # about 90 s for all of them
@pytest.mark.parametrize("fmt", export.EXACT_FORMATS)
@pytest.mark.parametrize("name", sorted(nets.ARCHS))
def test_every_architecture_exports_with_the_eager_answers_on_real_photos(name, fmt, photos, tmp_path):
    torch.manual_seed(0)
    size = {nets.ARCHS[name].size_kwarg: SIDE} if nets.ARCHS[name].size_kwarg else {}
    net = nets.build(name, num_classes=6, in_channels=3, **SMALL.get(name, {}), **size).eval()
    path = export.export_network(net, PHOTO, fmt, tmp_path / f"net.{fmt}")
    result = export.check_parity(net, path, fmt, photos)
    assert result["top1_agree"] == len(photos) and result["max_abs_diff"] <= 1e-4


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: a graph cannot hold it."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) if x.sum() > 0 else -x.mean(dim=(2, 3))


def test_a_network_that_does_not_export_is_a_clear_error(tmp_path):
    with pytest.raises(export.ExportError, match="DataDependent does not export to onnx"):
        export.export_network(DataDependent(), PHOTO, "onnx", tmp_path / "net.onnx")


def test_an_export_that_computes_something_else_is_refused(tmp_path):
    """Tracing records the one branch the example took: the parity check on other inputs catches it."""
    path = export.export_network(DataDependent(), PHOTO, "torchscript", tmp_path / "net.pt")
    traced = export.example_input(PHOTO)
    other = (traced.abs() + 1) * (-1 if traced.sum() > 0 else 1)  # the branch the trace did not take
    with pytest.raises(export.ExportError, match="differs from the eager network"):
        export.check_parity(DataDependent(), path, "torchscript", other)


def test_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(export.ExportError, match="unknown format 'tflite'"):
        export.export_network(DataDependent(), PHOTO, "tflite", tmp_path / "net")


@pytest.mark.integration
@pytest.mark.parametrize("fmt", export.EXACT_FORMATS)
def test_the_cli_exports_a_trained_checkpoint_checked_on_its_test_images(trained, data_dir, fmt, tmp_path, capsys):
    assert export.main(["--checkpoint", str(trained), "--format", fmt, "--out", str(tmp_path),
                        "--data-dir", str(data_dir), "--check-images", "50"]) == 0
    info = json.loads((tmp_path / "export.json").read_text())
    assert (tmp_path / info["file"]).is_file() and info["format"] == fmt
    assert info["labels"][0] == "T-shirt/top" and info["preprocess"]["height"] == 28
    assert info["arch"]["name"] == "small_cnn" and info["parity"]["images"] == 50
    assert info["parity"]["top1_agree"] == 50 and info["parity"]["max_abs_diff"] <= 1e-4
    assert "top-1 50/50" in capsys.readouterr().out


def test_the_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert export.main(["--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_an_onnx_export_holds_no_path_of_the_machine_that_built_it(tmp_path):
    """torch's exporter records stack traces; the export drops them, so the bytes depend on the
    network only (the DVC pipeline compares an export's hash across checkouts)."""
    torch.manual_seed(0)
    net = nets.build("small_cnn", num_classes=3, in_channels=3, width=4).eval()
    path = export.export_network(net, PHOTO, "onnx", tmp_path / "net.onnx")
    assert str(Path(nets.__file__).parents[1]).encode() not in path.read_bytes()
    assert b"small_cnn.py" not in path.read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v3_small", "efficientnet_lite"])
def test_int8_exports_stay_close_to_the_eager_answers_on_real_photos(name, photos, tmp_path):
    """Calibrated on real photos, checked on them: the probabilities move by at most the int8
    tolerance, and the file holds int8 weights (QDQ) ONNX Runtime runs."""
    import onnx

    torch.manual_seed(0)
    size = {nets.ARCHS[name].size_kwarg: SIDE} if nets.ARCHS[name].size_kwarg else {}
    net = nets.build(name, num_classes=6, in_channels=3, **SMALL.get(name, {}), **size).eval()
    path = export.export_network(net, PHOTO, "onnx-int8", tmp_path / "net.int8.onnx", calibration=photos)
    result = export.check_parity(net, path, "onnx-int8", photos)
    assert result["max_abs_diff"] <= export.INT8_TOLERANCE
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    initializers = onnx.load(str(path)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.INT8 for t in initializers)  # weights stored as int8


def test_int8_needs_calibration_images(tmp_path):
    with pytest.raises(export.ExportError, match="onnx-int8 needs calibration images"):
        export.export_network(DataDependent(), PHOTO, "onnx-int8", tmp_path / "net.int8.onnx")


@pytest.mark.integration
def test_the_cli_quantizes_a_trained_checkpoint_and_measures_its_accuracy(trained, data_dir, tmp_path, capsys):
    assert export.main(["--checkpoint", str(trained), "--format", "onnx-int8", "--out", str(tmp_path),
                        "--data-dir", str(data_dir), "--check-images", "50", "--accuracy-images", "2000"]) == 0
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["file"] == "model.int8.onnx" and info["calibration"] == "128 fashion-mnist training images"
    accuracy = info["accuracy"]
    assert accuracy["images"] == 2000 and accuracy["eager"] > 0.6  # a 2-epoch subset run
    assert abs(accuracy["change_pp"]) <= 100 * export.INT8_MAX_ACCURACY_DROP
    assert accuracy["change_pp"] == pytest.approx(100 * (accuracy["exported"] - accuracy["eager"]), abs=0.01)
    assert info["parity"]["images"] == 50 and info["parity"]["max_abs_diff"] <= export.INT8_TOLERANCE
    out = capsys.readouterr().out
    assert "int8 calibrated on 128 fashion-mnist training images" in out
    assert "top-1 accuracy on 2000 labelled test images" in out


@pytest.mark.integration
def test_an_int8_export_that_loses_accuracy_is_refused(trained, data_dir, tmp_path):
    """Calibrated on images a hundred times fainter than served, activations clip: the trained
    network's int8 form answers wrongly, and both checks refuse it."""
    from model import checkpoint

    ckpt = checkpoint.load(trained)
    net, spec = checkpoint.build_net(ckpt), checkpoint.preprocess_spec(ckpt)
    images, labels = export.dataset_test_images(ckpt, data_dir, 500)
    path = export.export_network(net, spec, "onnx-int8", tmp_path / "net.int8.onnx", calibration=images * 1e-2)
    with pytest.raises(export.ExportError, match=r"loses \d+\.\d% top-1 accuracy on 500 labelled images"):
        export.check_accuracy(net, path, "onnx-int8", (images, labels))
    with pytest.raises(export.ExportError, match="the onnx-int8 export differs from the eager network"):
        export.check_parity(net, path, "onnx-int8", images[:64])


@pytest.mark.integration
def test_an_int8_archive_export_checks_its_accuracy_on_every_labelled_test_image_here(trained, data_dir, tmp_path):
    """What the archive step calls: with the data directory, int8 is calibrated on training images
    and gated on all the test images found there; without it, on real photos and no labels."""
    from model import checkpoint

    ckpt = checkpoint.load(trained)
    _, info = export.export_checkpoint(ckpt, "onnx-int8", tmp_path / "with", data_dir=data_dir)
    assert info["calibration"] == "128 fashion-mnist training images"
    assert info["accuracy"]["images"] == 10_000 and abs(info["accuracy"]["change_pp"]) <= 1
    _, info = export.export_checkpoint(ckpt, "onnx-int8", tmp_path / "without")
    assert info["calibration"].startswith("6 scikit-image photos") and "accuracy" not in info

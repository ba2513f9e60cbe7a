"""model/export.py: every architecture of the registry exports to TorchScript and ONNX with the
eager network's answers on real photos; the CLI writes the network and its description; a
network that does not export, or exports to something else, is a clear error."""
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
@pytest.mark.parametrize("fmt", export.FORMATS)
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
@pytest.mark.parametrize("fmt", export.FORMATS)
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

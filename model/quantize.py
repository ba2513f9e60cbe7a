"""Post-training int8 quantization of an ONNX export (ONNX Runtime's static quantization), and the
top-1 accuracy it costs on real labelled images.

Static, not dynamic: ONNX Runtime's dynamic quantization covers MatMul and Gemm only, so a CNN's
convolutions would stay fp32. Static quantization stores QuantizeLinear/DequantizeLinear pairs
(QDQ) around each convolution and matmul: weights int8 per output channel, activations uint8 with
ranges calibrated on real images preprocessed as served. ONNX Runtime then runs the convolutions
in int8 (VNNI on the AVX-512 CPUs here). Measured on the 2-core machine here (the limit sweeps in
docs/bench/bench-{resnet50,imagenet}.md, two threads, one image per pass): ResNet-50 79 against
24 images/s, EfficientNet-Lite0 348 against 153.

Calibration images: the checkpoint's own training images when its dataset is in the data
directory, otherwise scikit-image's real photos (the pretrained ImageNet models: no ImageNet copy
ships here). export.json records which.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from handlers.preprocess import PreprocessSpec, normalize
from model import data, presets

log = logging.getLogger("quantize")
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
# scikit-image's colour photographs (CC0), for models whose own images are not here
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")


class QuantizeError(RuntimeError):
    """The network could not be quantized."""


def photos(spec: PreprocessSpec, n: int = len(PHOTOS)) -> torch.Tensor:
    """Up to `n` scikit-image photos, normalized as served (through the serving preprocessing)."""
    from skimage import data as skdata

    images = [Image.fromarray(getattr(skdata, name)()) for name in PHOTOS[:n]]
    return normalize(presets.images_to_uint8(images, spec), spec)


def own_images(ckpt: dict, spec: PreprocessSpec, data_dir: Path | None, train: bool,
               n: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`n` images (default: all) of the checkpoint's own dataset split, every len/n-th so that all
    classes come in, normalized as served, and their labels; None when that dataset is not one
    read here or not in `data_dir`."""
    dataset = ckpt.get("args", {}).get("dataset")
    if data_dir is None or dataset not in data.loadable():
        return None
    try:
        ds = data.load(dataset, Path(data_dir), train=train)
    except (FileNotFoundError, RuntimeError) as e:  # torchvision: "Dataset not found"
        log.info("%s is not in %s (%s)", dataset, data_dir, e)
        return None
    step = 1 if n is None else max(1, len(ds) // n)
    picked = range(0, len(ds), step)[:n]
    images = presets.images_to_uint8((ds[i][0] for i in picked), spec, desc=f"{dataset} images")
    return normalize(images, spec), data.labels_tensor(ds)[list(picked)]


def calibration_images(ckpt: dict, spec: PreprocessSpec, data_dir: Path | None,
                       n: int = CALIBRATION_IMAGES) -> tuple[torch.Tensor, str]:
    """Images to calibrate the activation ranges on, and a line saying which."""
    own = own_images(ckpt, spec, data_dir, train=True, n=n)
    if own is not None:
        return own[0], f"{len(own[0])} {ckpt['args']['dataset']} training images"
    x = photos(spec)
    return x, f"{len(x)} scikit-image photos ({', '.join(PHOTOS[:len(x)])})"


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over a tensor of images."""

    def __init__(self, input_name: str, images: torch.Tensor, batch: int):
        self.feeds = iter([{input_name: images[i:i + batch].contiguous().numpy()}
                           for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantize(fp32: Path, out: Path, calibration: torch.Tensor, batch: int = CALIBRATION_BATCH) -> Path:
    """Write the int8 (QDQ) form of the fp32 ONNX network `fp32` to `out`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Batches)
    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        # shape inference and graph folding first, as ONNX Runtime recommends before quantizing
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(out), _Batches(input_name, calibration, batch),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # noqa: BLE001 - any quantizer failure is this network's
            raise QuantizeError(f"{fp32.name} does not quantize to int8: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    return out

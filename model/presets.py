"""Transforms. The eval preset IS the serving preprocessing (handlers.preprocess with the spec that
the checkpoint carries); training augmentation runs on uint8 batches before the same normalize."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, image_to_tensor, image_to_uint8

# The pretrained EfficientNet-Lite0 (model/imagenet.py). Its weights come from TensorFlow, which fed
# them (x*255 - 127) / 128; the shorter side to 256 then a 224 crop is TF's 0.875 eval crop. On real
# photos this scored clearly above torchvision's ImageNet mean/std, and bilinear above bicubic.
IMAGENET_SPEC = PreprocessSpec(height=224, width=224, channels=3, mean=(127 / 255,) * 3,
                               std=(128 / 255,) * 3, resize="resize_center_crop", resize_shorter=256)

# Per-dataset default specs: input geometry plus channel statistics of the training split.
DATASET_SPECS: dict[str, PreprocessSpec] = {
    "fashion-mnist": PreprocessSpec(height=28, width=28, channels=1, mean=(0.2860,), std=(0.3530,)),
    "mnist": PreprocessSpec(height=28, width=28, channels=1, mean=(0.1307,), std=(0.3081,)),
    # CIFAR-10's published training-split statistics (no copy here to recompute them offline)
    "cifar-10": PreprocessSpec(height=32, width=32, channels=3, mean=(0.4914, 0.4822, 0.4465),
                               std=(0.2470, 0.2435, 0.2616)),
    "imagenet": IMAGENET_SPEC,
}


def images_to_uint8(images, spec: PreprocessSpec, desc: str = "preprocess") -> torch.Tensor:
    """Iterable of PIL images → uint8 [N, C, H, W] through the serving code path."""
    return torch.stack([image_to_uint8(img, spec) for img in tqdm(images, desc=desc, unit="img",
                                                                 leave=False, mininterval=1)])


def eval_transform(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """One PIL image → the normalized tensor the served model sees (the serving function itself)."""
    return image_to_tensor(img, spec)


def train_augment(batch: torch.Tensor, pad: int = 2, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random translation (zero padding, then crop back) and horizontal flip on a uint8
    or float [N, C, H, W] batch."""
    n, c, h, w = batch.shape
    if pad:
        padded = F.pad(batch, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (torch.arange(h)[None] + oy[:, None])[:, None, :, None]
        cols = (torch.arange(w)[None] + ox[:, None])[:, None, None, :]
        batch = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(mask[:, None, None, None], batch.flip(-1), batch)
    return batch

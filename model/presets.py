"""Transforms. The eval preset IS the serving preprocessing (handlers.preprocess with the spec that
the checkpoint carries); training augmentation runs on uint8 batches before the same normalize."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, image_to_tensor, image_to_uint8


def images_to_uint8(images, spec: PreprocessSpec, desc: str = "preprocess") -> torch.Tensor:
    """Iterable of PIL images → uint8 [N, C, H, W] through the serving code path."""
    return torch.stack([image_to_uint8(img, spec) for img in tqdm(images, desc=desc, unit="img",
                                                                 leave=False, mininterval=1)])


def eval_transform(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """One PIL image → the normalized tensor the served model sees (the serving function itself)."""
    return image_to_tensor(img, spec)


@dataclass(frozen=True)
class TrainPreset:
    """Training augmentation on uint8 [N, C, H, W] batches, per sample, before the serving
    normalize: shift (zero-pad then crop back, pixels), horizontal flip, rotation (± degrees),
    random resized crop (`crop_scale`: the smallest area kept, aspect 3/4-4/3, resized back),
    colour jitter (brightness, contrast and, for RGB, saturation, each within 1 ± `jitter`), and
    random erasing (with probability `erasing`, one rectangle of 2-33% of the image set to the
    normalization mean, i.e. 0 after normalize: torchvision's RandomErasing)."""
    shift: int = 0
    flip: bool = False
    rotation: float = 0.0
    crop_scale: float | None = None
    jitter: float = 0.0
    erasing: float = 0.0

    def __call__(self, batch: torch.Tensor, spec: PreprocessSpec,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if self.rotation or self.crop_scale:
            batch = _affine(batch, self, generator)
        elif self.shift or self.flip:  # integer shift: exact pixels (the CPU recipe's augmentation)
            batch = train_augment(batch, self.shift, self.flip, generator)
        if self.jitter:
            batch = _jitter(batch, self.jitter, generator)
        if self.erasing:
            batch = _erase(batch, self.erasing, spec, generator)
        return batch

    def summary(self) -> str:
        """The fields that differ from no augmentation, e.g. 'shift 2, flip' (for --help)."""
        return ", ".join(f.name if v is True else f"{f.name} {v}" for f in fields(self)
                         if (v := getattr(self, f.name)) != f.default)


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _affine(batch: torch.Tensor, p: TrainPreset, generator) -> torch.Tensor:
    """Crop, rotation, shift and flip as one per-sample affine resampling (bilinear, zeros out of
    the image). theta maps output to input coordinates in [-1, 1]."""
    n, _, h, w = batch.shape
    area = _uniform(n, p.crop_scale, 1.0, generator) if p.crop_scale else torch.ones(n)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator) if p.crop_scale else torch.zeros(n)
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # the crop's width / the image's
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx = (1 - sx) * _uniform(n, -1, 1, generator) + 2 * p.shift / w * _uniform(n, -1, 1, generator)
    ty = (1 - sy) * _uniform(n, -1, 1, generator) + 2 * p.shift / h * _uniform(n, -1, 1, generator)
    angle = torch.deg2rad(_uniform(n, -p.rotation, p.rotation, generator))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if p.flip else torch.ones(n)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([sx * cos * flip, -sx * sin, tx], 1),
                         torch.stack([sy * sin * flip, sy * cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _jitter(batch: torch.Tensor, strength: float, generator) -> torch.Tensor:
    n, c = batch.shape[:2]
    x = batch.float()

    def factor() -> torch.Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).view(n, 1, 1, 1)

    x = x * factor()  # brightness
    gray = x.mean(dim=(1, 2, 3), keepdim=True)
    x = gray + (x - gray) * factor()  # contrast
    if c == 3:
        luma = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = luma + (x - luma) * factor()  # saturation
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _erase(batch: torch.Tensor, probability: float, spec: PreprocessSpec, generator) -> torch.Tensor:
    n, c, h, w = batch.shape
    fill = torch.tensor([round(m * 255) for m in spec.mean], dtype=torch.uint8).view(c, 1, 1)
    out = batch.clone()
    chosen = torch.rand(n, generator=generator) < probability
    area = _uniform(n, 0.02, 0.33, generator) * h * w
    ratio = _uniform(n, math.log(0.3), math.log(3.3), generator).exp()
    eh = (area * ratio).sqrt().round().long().clamp(1, h)
    ew = (area / ratio).sqrt().round().long().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    for i in chosen.nonzero().flatten().tolist():
        out[i, :, top[i]:top[i] + eh[i], left[i]:left[i] + ew[i]] = fill
    return out


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

"""The ONE place that turns image bytes (or a PIL image) into the model's input tensor.

`PreprocessSpec` travels in the checkpoint and the `.mar`; training's eval preset and every
serving runtime call `image_to_tensor` with it, so a served model sees exactly what it was
evaluated on.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.errors import EmptyInput, ImageTooLarge, InvalidImage
from handlers.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

RESIZE_POLICIES = ("resize", "resize_center_crop")
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}



@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a tensor: `channels` (1 = grayscale, 3 = RGB), output `height`×`width`,
    `resize` policy ("resize": squash to size; "resize_center_crop": shorter side to
    `resize_shorter`, then center crop), interpolation, per-channel mean/std on the 0..1 scale,
    and the gray level (0..255) that transparent pixels are composited onto."""

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "resize"
    resize_shorter: int | None = None
    interpolation: str = "bilinear"
    background: int = 0

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError("height and width must be positive")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def decode_image(data: bytes | bytearray, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes → fully decoded PIL image (first frame), EXIF orientation applied.
    Raises a typed InputError naming the problem; never anything else for bad bytes."""
    if not data:
        raise EmptyInput("empty request body: expected image bytes")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(f"image is {img.width}x{img.height} pixels, over the "
                                    f"{max_pixels}-pixel limit")
            img.load()  # decode now so truncated files fail here, not later
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image rejected as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise InvalidImage("body is not an image in a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"image could not be decoded: {e}") from None
    return ImageOps.exif_transpose(img)


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (I;16, I, F) scaled to 0..255 instead of PIL's clipping convert."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img


def to_model_mode(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Any PIL mode → the spec's mode; transparency is composited onto the spec's background."""
    img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (spec.background,) * 3 + (255,))
        img = Image.alpha_composite(bg, rgba)
    return img if img.mode == spec.mode else img.convert(spec.mode)


def resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    interp = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "resize":
        if img.size != (spec.width, spec.height):
            img = img.resize((spec.width, spec.height), interp)
        return img
    shorter = spec.resize_shorter or max(spec.height, spec.width)
    w, h = img.size
    scale = shorter / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), interp)
    w, h = img.size
    left, top = (w - spec.width) // 2, (h - spec.height) // 2
    return img.crop((left, top, left + spec.width, top + spec.height))


def normalize(uint8_chw: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 [..., C, H, W] → float32 normalized; works on a single image or a batch."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return (uint8_chw.float().div_(255.0) - mean) / std


def image_to_uint8(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """PIL image → uint8 [C, H, W] in the spec's mode and size (before normalization)."""
    img = resize(to_model_mode(img, spec), spec)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def image_to_tensor(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """PIL image → normalized float32 [C, H, W]: the eval preset and the serving path."""
    return normalize(image_to_uint8(img, spec), spec)


def bytes_to_tensor(data: bytes | bytearray, spec: PreprocessSpec,
                    max_bytes: int = DEFAULT_MAX_BYTES,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    return image_to_tensor(decode_image(data, max_bytes, max_pixels), spec)

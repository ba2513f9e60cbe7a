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


def open_image(data: bytes | bytearray, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes → a PIL image whose header is read and checked against the limits, not yet decoded.
    Raises a typed InputError naming the problem."""
    if not data:
        raise EmptyInput("empty request body: expected image bytes")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image rejected as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise InvalidImage("body is not an image in a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"image could not be decoded: {e}") from None
    if img.width * img.height > max_pixels:
        raise ImageTooLarge(f"image is {img.width}x{img.height} pixels, over the {max_pixels}-pixel limit")
    return img


def load_image(img: Image.Image) -> Image.Image:
    """An opened image fully decoded (first frame), so truncated files fail here; EXIF orientation
    applied."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"image could not be decoded: {e}") from None
    return ImageOps.exif_transpose(img)


def decode_image(data: bytes | bytearray, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes → fully decoded PIL image (first frame), EXIF orientation applied.
    Raises a typed InputError naming the problem; never anything else for bad bytes."""
    return load_image(open_image(data, max_bytes, max_pixels))


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
    """uint8 [..., C, H, W] → float32 normalized; a single image or a batch, on its own device."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=uint8_chw.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=uint8_chw.device).view(-1, 1, 1)
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


# --- the tensor path: torchvision.io decoding and resizing on the model's device ------------------
# Same spec, same steps (mode, resize policy, uint8 rounding, normalize) as the PIL path above. It
# takes only what torchvision.io decodes as PIL would: complete 8-bit RGB/gray JPEG or PNG without
# transparency or EXIF rotation; everything else goes the PIL path. Results agree within the
# tolerance tests/handlers/test_preprocess.py states (resampling and JPEG IDCT differ by a few levels).

JPEG_END, PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"
EXIF_ORIENTATION = 0x0112


def tensor_decodable(img: Image.Image, data: bytes | bytearray) -> bool:
    """Whether `data` (opened as `img`, header only) can take the tensor path."""
    if img.mode not in ("RGB", "L") or "transparency" in img.info:
        return False
    if img.format == "JPEG":
        # a truncated JPEG decodes "successfully" in libjpeg with a warning: leave it to PIL's error
        return bytes(data[-2:]) == JPEG_END and img.getexif().get(EXIF_ORIENTATION, 1) == 1
    if img.format == "PNG":
        return bytes(data[-8:]) == PNG_END and img.getexif().get(EXIF_ORIENTATION, 1) == 1
    return False


def decode_tensors(items: list[tuple[str, bytes | bytearray]], spec: PreprocessSpec,
                   device: torch.device) -> list[torch.Tensor]:
    """(format, bytes) pairs → uint8 [C, H, W] tensors on `device` in the spec's mode. JPEGs are
    decoded together on the GPU (nvjpeg) when `device` is one; PNGs on the CPU, then moved."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    mode = ImageReadMode.GRAY if spec.channels == 1 else ImageReadMode.RGB
    out: list[torch.Tensor | None] = [None] * len(items)
    raw = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _, data in items]
    try:
        jpegs = [i for i, (fmt, _) in enumerate(items) if fmt == "JPEG"]
        if device.type == "cuda" and jpegs:
            for i, t in zip(jpegs, decode_jpeg([raw[i] for i in jpegs], mode=mode, device=device)):
                out[i] = t
        for i, t in enumerate(out):
            if t is None:
                out[i] = decode_image(raw[i], mode=mode).to(device, non_blocking=True)
    except RuntimeError as e:  # torchvision's decoders raise RuntimeError for corrupt data
        raise InvalidImage(f"image could not be decoded: {e}") from None
    return out  # type: ignore[return-value]


def resize_tensor(uint8_chw: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """`resize` on a uint8 [C, H, W] tensor: the same policy, sizes and crop offsets."""
    from torchvision.transforms.v2 import functional as F

    interp = F.InterpolationMode(spec.interpolation)
    h, w = uint8_chw.shape[-2:]
    if spec.resize == "resize":
        if (h, w) == (spec.height, spec.width):
            return uint8_chw
        return F.resize(uint8_chw, [spec.height, spec.width], interpolation=interp, antialias=True)
    shorter = spec.resize_shorter or max(spec.height, spec.width)
    scale = shorter / min(w, h)
    out = F.resize(uint8_chw, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=interp,
                   antialias=True)
    h, w = out.shape[-2:]
    top, left = (h - spec.height) // 2, (w - spec.width) // 2
    return out[..., top:top + spec.height, left:left + spec.width]

import numpy as np
import pytest
import torch
from PIL import Image

from handlers import preprocess as pp
from handlers.errors import EmptyInput, ImageTooLarge, InvalidImage
from tests.helpers import png_bytes

GRAY28 = pp.PreprocessSpec(height=28, width=28, channels=1, mean=(0.5,), std=(0.25,))
RGB = pp.PreprocessSpec(height=8, width=6, channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))


def test_spec_round_trips_through_dict():
    spec = pp.PreprocessSpec(height=224, width=224, channels=3, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), resize="resize_center_crop", resize_shorter=256)
    assert pp.PreprocessSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 2}, "channels"),
    ({"mean": (0.1, 0.2)}, "mean/std"),
    ({"std": (0.0,)}, "std"),
    ({"resize": "stretch"}, "resize"),
    ({"interpolation": "cubic"}, "interpolation"),
    ({"height": 0}, "positive"),
])
def test_spec_rejects_invalid_values(kwargs, message):
    base = dict(height=28, width=28, channels=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match=message):
        pp.PreprocessSpec(**{**base, **kwargs})


def test_normalize_applies_mean_and_std_per_channel():
    x = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = pp.normalize(x, RGB)
    assert torch.allclose(out[:, 0, 0], torch.tensor([(1 - 0.1) / 0.5, (1 - 0.2) / 0.5, (1 - 0.3) / 0.5]))
    batch = pp.normalize(x[None].expand(4, -1, -1, -1), RGB)
    assert batch.shape == (4, 3, 2, 2) and torch.equal(batch[2], out)


def test_bytes_to_tensor_matches_manual_computation():
    arr = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    out = pp.bytes_to_tensor(png_bytes(Image.fromarray(arr, "L")), GRAY28)
    expected = (torch.from_numpy(arr).float() / 255 - 0.5) / 0.25
    assert out.shape == (1, 28, 28) and torch.allclose(out[0], expected)


def test_rgb_image_becomes_grayscale_for_a_one_channel_model():
    img = Image.new("RGB", (28, 28), (255, 0, 0))
    out = pp.image_to_uint8(img, GRAY28)
    assert out.shape == (1, 28, 28) and int(out[0, 0, 0]) == Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_composited_onto_the_background(mode):
    img = Image.new(mode, (28, 28))  # fully transparent
    white_bg = pp.PreprocessSpec(height=28, width=28, channels=1, mean=(0.,), std=(1.,), background=255)
    assert int(pp.image_to_uint8(img, white_bg).min()) == 255
    assert int(pp.image_to_uint8(img, GRAY28).max()) == 0


def test_sixteen_bit_images_are_scaled_not_clipped():
    arr = np.full((28, 28), 65535 // 2, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    value = int(pp.image_to_uint8(img, GRAY28)[0, 0, 0])
    assert 126 <= value <= 128


def test_palette_image_is_converted():
    img = Image.new("P", (10, 10))
    img.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    img.paste(1, (0, 0, 10, 10))
    assert int(pp.image_to_uint8(img, RGB)[0, 0, 0]) == 200


def test_resize_squashes_to_the_spec_size():
    out = pp.image_to_uint8(Image.new("RGB", (100, 30)), RGB)
    assert out.shape == (3, 8, 6) and out.dtype == torch.uint8


def test_resize_center_crop_keeps_the_centre():
    spec = pp.PreprocessSpec(height=4, width=4, channels=1, mean=(0.,), std=(1.,),
                             resize="resize_center_crop", resize_shorter=4, interpolation="nearest")
    arr = np.zeros((4, 12), dtype=np.uint8)
    arr[:, 4:8] = 255  # a white band in the middle third
    out = pp.image_to_uint8(Image.fromarray(arr, "L"), spec)
    assert out.shape == (1, 4, 4) and int(out.min()) == 255


def test_exif_orientation_is_applied():
    arr = np.zeros((10, 20, 3), dtype=np.uint8)  # wide image...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...stored rotated: viewers show it 90° clockwise, i.e. tall
    data = png_bytes(Image.fromarray(arr), "JPEG", exif=exif)
    assert pp.decode_image(data).size == (10, 20)


def test_empty_body_is_rejected():
    with pytest.raises(EmptyInput, match="empty"):
        pp.decode_image(b"")


def test_non_image_bytes_are_rejected_with_a_clear_message():
    with pytest.raises(InvalidImage, match="not an image"):
        pp.decode_image(b"this is plain text, not an image")


def test_truncated_png_is_rejected():
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(InvalidImage):
        pp.decode_image(data[: len(data) // 2])


def test_bodies_over_the_byte_limit_are_rejected():
    with pytest.raises(ImageTooLarge, match="byte limit") as e:
        pp.decode_image(png_bytes(Image.new("L", (28, 28))), max_bytes=10)
    assert e.value.status == 413


def test_images_over_the_pixel_limit_are_rejected_before_decoding():
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        pp.decode_image(png_bytes(Image.new("L", (100, 100))), max_pixels=100 * 99)


# --- the tensor path (torchvision.io decode + resize on the model's device) ----------------------
# Stated tolerance against the PIL path, on the CPU: uint8 pixels after resizing differ by at most
# 8 levels and by at most 1 level on average (resampling arithmetic, and libjpeg decoding straight
# to gray where PIL converts from RGB). tests/handlers/test_classifier.py holds the prediction tolerance.

IMAGENET_LIKE = pp.PreprocessSpec(224, 224, 3, (0.5,) * 3, (0.5,) * 3, "resize_center_crop", 256)
GRAY_CROP = pp.PreprocessSpec(224, 224, 1, (0.5,), (0.5,), "resize_center_crop", 256)
CPU = torch.device("cpu")


def real_photos() -> dict[str, bytes]:
    from skimage import data as sk
    out = {}
    for name, arr in (("chelsea", sk.chelsea()), ("coffee", sk.coffee())):
        out[f"{name}.jpg"] = png_bytes(Image.fromarray(arr), "JPEG", quality=90)
        out[f"{name}.png"] = png_bytes(Image.fromarray(arr))
    return out


@pytest.mark.parametrize("spec", [IMAGENET_LIKE, GRAY_CROP, GRAY28, RGB], ids=["rgb-crop", "gray-crop", "gray28", "rgb-squash"])
def test_tensor_path_matches_the_pil_path_within_tolerance(spec):
    for name, data in real_photos().items():
        img = pp.open_image(data)
        assert pp.tensor_decodable(img, data), name
        reference = pp.image_to_uint8(pp.load_image(pp.open_image(data)), spec).int()
        fast = pp.resize_tensor(pp.decode_tensors([(img.format, data)], spec, CPU)[0], spec)
        assert fast.dtype == torch.uint8 and fast.shape == reference.shape == (spec.channels, spec.height, spec.width)
        diff = (fast.int() - reference).abs().float()
        assert diff.max() <= 8 and diff.mean() <= 1.0, (name, diff.max(), diff.mean())


def test_only_what_torchvision_decodes_like_pil_takes_the_tensor_path():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    jpeg = png_bytes(photo, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: torchvision's GPU decoder would not apply it
    ineligible = {
        "truncated jpeg": jpeg[:-40],
        "rotated jpeg": png_bytes(photo, "JPEG", exif=exif),
        "cmyk jpeg": png_bytes(photo.convert("CMYK"), "JPEG"),
        "rgba png": png_bytes(photo.convert("RGBA")),
        "16-bit png": png_bytes(Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))),
        "palette png": png_bytes(photo.convert("P")),
        "gif": png_bytes(photo, "GIF"),
        "webp": png_bytes(photo, "WEBP"),
    }
    for name, data in ineligible.items():
        assert not pp.tensor_decodable(pp.open_image(data), data), name
    for data in (jpeg, png_bytes(photo), png_bytes(photo.convert("L"))):
        assert pp.tensor_decodable(pp.open_image(data), data)


def test_a_corrupt_image_on_the_tensor_path_is_an_invalid_image():
    data = bytearray(png_bytes(Image.new("RGB", (16, 16), "red"), "JPEG"))
    data[30:200] = b"\x00" * 170  # header and end marker intact, entropy-coded data wrecked
    with pytest.raises(InvalidImage, match="could not be decoded"):
        pp.decode_tensors([("JPEG", bytes(data))], RGB, CPU)


def test_open_image_checks_limits_before_decoding():
    big = png_bytes(Image.new("L", (300, 300)))
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        pp.open_image(big, max_pixels=300 * 299)
    with pytest.raises(EmptyInput):
        pp.open_image(b"")

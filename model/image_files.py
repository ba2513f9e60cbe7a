"""What every file-based data source shares: the error a missing dataset raises and the reading of
one training image file through serving's own decoding, with training's limits.

`model.data` (torchvision sets, ImageFolder) and `model.datasets_csv` (CSV lists) both import
this module; it imports neither, so the two sources need no import of each other but data → csv."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from handlers.preprocess import decode_image

MAX_FILE_BYTES = 1 << 31  # training files are trusted more than request bodies, but not unbounded
MAX_FILE_PIXELS = 1 << 31  # Pillow's decompression-bomb check still applies


class DatasetNotFound(FileNotFoundError):
    pass


def load_image_file(path: Path | str) -> Image.Image:
    """A file → a fully decoded PIL image, EXIF orientation applied: serving's own decoding."""
    return decode_image(Path(path).read_bytes(), max_bytes=MAX_FILE_BYTES, max_pixels=MAX_FILE_PIXELS)

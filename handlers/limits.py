"""Serving limits for one image (no heavy imports: settings and clients read these too)."""

DEFAULT_MAX_BYTES = 6 * 1024 * 1024  # per image, after any base64 decoding
DEFAULT_MAX_PIXELS = 40_000_000  # decompression-bomb guard: width × height

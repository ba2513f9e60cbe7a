"""Serving limits (no heavy imports: settings, the chart's tests and clients read these too)."""

DEFAULT_MAX_BYTES = 6 * 1024 * 1024  # per image, after any base64 decoding
DEFAULT_MAX_PIXELS = 40_000_000  # decompression-bomb guard: width × height
DEFAULT_MAX_IMAGES = 64  # per request


def max_request_size(max_image_bytes: int) -> int:
    """A body with room for one image of `max_image_bytes` as base64 JSON."""
    return max_image_bytes * 4 // 3 + 64 * 1024


DEFAULT_MAX_REQUEST_BYTES = max_request_size(DEFAULT_MAX_BYTES)

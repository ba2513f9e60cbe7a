"""Request decoding: one TorchServe request row → image bytes, or a typed InputError.
The model path never sees transports; every envelope is unwrapped here."""
from __future__ import annotations

from handlers.errors import EmptyInput, InputError, UnsupportedPayload


def payload_from_row(row: dict) -> bytes | InputError:
    """TorchServe hands each request as a dict; a raw body arrives under "body" or "data"."""
    value = row.get("data") if row.get("data") is not None else row.get("body")
    if value is None:
        return EmptyInput("request has no body: send the image bytes as the request body")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return UnsupportedPayload(
        f"expected raw image bytes as the request body, got {type(value).__name__}")

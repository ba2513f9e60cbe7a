"""Typed input errors: each names the problem, carries a stable reason code (a bounded metric
label) and the HTTP status a transport should answer with. Models raise these; transports map them."""


class InputError(ValueError):
    """A request the server refuses because of its content; never a server fault."""

    reason = "invalid_input"
    status = 400

    def to_dict(self) -> dict:
        return {"error": str(self), "reason": self.reason, "code": self.status}


class EmptyInput(InputError):
    reason = "empty_input"


class UnsupportedPayload(InputError):
    reason = "unsupported_payload"


class InvalidImage(InputError):
    reason = "invalid_image"


class ImageTooLarge(InputError):
    reason = "image_too_large"
    status = 413


class MalformedRequest(InputError):
    reason = "malformed_request"


class InvalidBase64(InputError):
    reason = "invalid_base64"


class InvalidOption(InputError):
    reason = "invalid_option"

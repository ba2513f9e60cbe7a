"""Typed input errors: each names the problem, carries a stable reason code (a bounded metric
label) and the HTTP status a transport should answer with. Models raise these; transports map them."""


class InputError(ValueError):
    """A request the server refuses: its content, its size, or a server already full; never a
    server fault."""

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


class RequestTooLarge(InputError):
    """The whole body (or gRPC message) is over the server's limit: refused before it is read."""
    reason = "request_too_large"
    status = 413


class RequestTimeout(InputError):
    """The body did not arrive whole in time (a slow or stalled upload)."""
    reason = "request_timeout"
    status = 408


class Overloaded(InputError):
    """Not the request's fault: the server holds as much as it may; retry after Retry-After."""
    reason = "overloaded"
    status = 503


class Unauthenticated(InputError):
    """No bearer token, or one the server does not accept (REST 401, gRPC UNAUTHENTICATED)."""
    reason = "unauthenticated"
    status = 401


class Unavailable(InputError):
    """The server behind a proxy does not answer (starting or restarting): retry after Retry-After."""
    reason = "unavailable"
    status = 503

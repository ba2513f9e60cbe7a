"""Our JSON error bodies (handlers.errors) on kserve's REST app, and INVALID_ARGUMENT without an
ERROR traceback on its gRPC server, for every request kserve or the model refuses."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import StatusCode
from kserve.errors import InvalidInput
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

from handlers.errors import InputError, MalformedRequest
from scripts.runtime.decode import INFERENCE_HEADER_LENGTH, schema_problems
from scripts.runtime.model import RequestRefused


async def refused_response(_: Request, exc: InvalidInput) -> JSONResponse:
    if isinstance(exc, RequestRefused):
        return JSONResponse(exc.body, status_code=exc.status)
    error = MalformedRequest(str(exc))  # kserve's own decoding errors, e.g. a body that is not JSON
    return JSONResponse(error.to_dict(), status_code=error.status)


async def invalid_body_response(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's schema check of the v2 body: a 400 in our shape instead of its 422."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        error = MalformedRequest("request body is not valid JSON")
    else:  # kserve's route takes the schema or raw bytes: report the schema's complaints
        errors = [e for e in errors if e.get("loc", ())[1:2] != ("bytes",)] or errors
        error = MalformedRequest(f"not an OIP v2 inference request: {schema_problems(errors, skip=2)}")
    return JSONResponse(error.to_dict(), status_code=error.status)


class BinaryTensorBodies:
    """ASGI middleware: an OIP v2 body in the binary tensor extension (it has
    Inference-Header-Content-Length) is JSON followed by raw bytes, whatever Content-Type the client gave it (kserve's SDK says
    application/json, and FastAPI would parse it as JSON and fail): it reaches the route as bytes,
    which the data plane reads (scripts/runtime/decode.py rest_v2_request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = scope.get("headers", [])
        if (scope["type"] == "http" and scope.get("path", "").startswith("/v2/")
                and any(k == INFERENCE_HEADER_LENGTH.encode() for k, _ in headers)):
            scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"content-type"]
                     + [(b"content-type", b"application/octet-stream")]}
        await self.app(scope, receive, send)


class UnsupportedExtension(InputError):
    reason = "not_supported"
    status = 404


async def model_config_unsupported(model_name: str, model_version: str | None = None) -> JSONResponse:
    """Triton's model configuration extension (tritonclient's get_model_config): not served here,
    said plainly instead of FastAPI's bare 404."""
    error = UnsupportedExtension(f"model configuration (GET /v2/models/{model_name}/config) is a Triton extension "
                                 f"this runtime does not serve; GET /v2/models/{model_name} has the model's metadata")
    return JSONResponse(error.to_dict(), status_code=error.status)


class InterceptorForRefusals(ExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator, context, method_name: str):
        if isinstance(ex, RequestRefused):  # a client's bad input: no ERROR log with a traceback
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)

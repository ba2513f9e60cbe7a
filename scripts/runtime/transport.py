"""Our JSON error bodies (handlers.errors) on kserve's REST app, and INVALID_ARGUMENT without an
ERROR traceback on its gRPC server, for every request kserve or the model refuses."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import StatusCode
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

from handlers.errors import MalformedRequest
from scripts.runtime.model import RequestRefused


async def refused_response(_: Request, exc: InvalidInput) -> JSONResponse:
    if isinstance(exc, RequestRefused):
        return JSONResponse(exc.body, status_code=exc.status)
    error = MalformedRequest(str(exc))  # kserve's own decoding errors, e.g. a body that is not JSON
    return JSONResponse(error.to_dict(), status_code=error.status)


async def undecodable_response(_: Request, exc: InferenceError) -> JSONResponse:
    """kserve raises InferenceError (its handler: 500, echoing the whole payload) while decoding
    OIP binary tensor data, e.g. raw image bytes it reads as UTF-8. Our model never raises it."""
    error = MalformedRequest(f"binary tensor data could not be decoded (send images as base64 strings in "
                             f'"data", or raw over gRPC): {str(exc)[:120]}')
    return JSONResponse(error.to_dict(), status_code=error.status)


def _field(loc: tuple) -> str:
    """("body", "InferenceRequest", "inputs", 0, "shape") → "inputs[0].shape"."""
    out = ""
    for part in loc[2:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


async def invalid_body_response(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's schema check of the v2 body: a 400 in our shape instead of its 422."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        error = MalformedRequest("request body is not valid JSON")
    else:  # kserve's route takes the schema or raw bytes: report the schema's complaints
        errors = [e for e in errors if e.get("loc", ())[1:2] != ("bytes",)] or errors
        problems = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors)
        error = MalformedRequest(f"not an OIP v2 inference request: {problems}")
    return JSONResponse(error.to_dict(), status_code=error.status)


class InterceptorForRefusals(ExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator, context, method_name: str):
        if isinstance(ex, RequestRefused):  # a client's bad input: no ERROR log with a traceback
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)

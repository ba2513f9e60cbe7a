"""Our JSON error bodies (handlers.errors) on kserve's REST app, and INVALID_ARGUMENT (UNAVAILABLE
when full) without an ERROR traceback on its gRPC server, for every request kserve or the model
refuses; the REST edge's limits (RequestGate)."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Callable
from urllib.parse import parse_qsl, unquote, urlencode

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import StatusCode, aio, unary_unary_rpc_method_handler
from kserve.errors import InvalidInput
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor

from handlers.auth import GRPC_HOW, REST_HOW, TokenFile, challenge, refusal
from handlers.metrics import PrometheusMetrics, grpc_http_status
from handlers.errors import InputError, MalformedRequest, Overloaded, RequestTimeout, RequestTooLarge
from handlers.settings import RequestLimits
from scripts.runtime.decode import INFERENCE_HEADER_LENGTH, schema_problems
from scripts.runtime.model import RequestRefused
from scripts.runtime.tracing import Tracer


async def refused_response(_: Request, exc: InvalidInput) -> JSONResponse:
    if isinstance(exc, RequestRefused):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
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


class NotServedHere(InputError):
    reason = "not_served_here"
    status = 404


class MetricsElsewhere:
    """ASGI middleware: kserve registers /metrics beside the inference API; this runtime serves it
    on a port of its own (--metrics-port), which a NetworkPolicy can open to the monitoring
    namespace alone, so here it is a 404 that says where to look."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == "/metrics":
            return await refuse(send, NotServedHere("/metrics is served on this runtime's metrics port "
                                                    "(--metrics-port; the chart's ports.kserveNative.metrics)"))
        await self.app(scope, receive, send)


class NotAllowed(InputError):
    reason = "not_allowed"
    status = 403


class UnknownVersion(InputError):
    reason = "model_not_found"
    status = 404


GRPC_CODES = {Overloaded.status: StatusCode.UNAVAILABLE,  # retryable, as Triton answers a full queue
              NotAllowed.status: StatusCode.PERMISSION_DENIED}


class InterceptorForRefusals(ExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator, context, method_name: str):
        if isinstance(ex, RequestRefused):  # a client's bad input: no ERROR log with a traceback
            await context.abort(GRPC_CODES.get(ex.status, StatusCode.INVALID_ARGUMENT), ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)


def header(scope, name: bytes) -> bytes | None:
    """A request header's value (the first, if repeated) from an ASGI scope."""
    return next((v for k, v in scope.get("headers", []) if k == name), None)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class RequestGate:
    """ASGI middleware before kserve's app, for every request with a body: a declared
    Content-Length over `max_request_bytes` gets 413 before a byte is read; beyond `max_inflight`
    requests at once, 503 with Retry-After before reading; the body is then read here, counted
    (a chunked body over the limit gets 413 as soon as it passes it) and timed (not whole within
    `body_timeout_s`: 408), and handed on. So one server holds at most max_inflight bodies of at
    most max_request_bytes each, and a slow upload holds one slot for at most the timeout."""

    def __init__(self, app, limits: RequestLimits):
        self.app, self.limits = app, limits
        self.inflight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.limits.max_request_bytes
        declared = header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return await refuse(send, RequestTooLarge(
                f"request body of {int(declared)} bytes is over this server's {limit}-byte limit"))
        if self.inflight >= self.limits.max_inflight:
            return await refuse(send, Overloaded(
                f"{self.inflight} requests in progress (at most {self.limits.max_inflight}); retry after "
                f"{self.limits.retry_after_s} s"), self.limits.retry_after_s)
        self.inflight += 1
        try:
            try:
                body = await asyncio.wait_for(read_body(receive, limit), self.limits.body_timeout_s)
            except _BodyTooLarge:
                return await refuse(send, RequestTooLarge(f"request body is over this server's {limit}-byte limit"))
            except asyncio.TimeoutError:
                return await refuse(send, RequestTimeout(
                    f"request body not received whole within {self.limits.body_timeout_s} s"))
            except _ClientGone:
                return
            delivered = False

            async def replay():
                nonlocal delivered
                if delivered:
                    return await receive()  # after the body: the disconnect, when it comes
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.inflight -= 1


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def refuse(send, error: InputError, retry_after_s: int | None = None,
                 extra: list[tuple[bytes, bytes]] = ()) -> None:
    """Our JSON error body; the connection closes after it (the body may be left unread)."""
    body = orjson.dumps(error.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# What a kubelet, a load balancer and Prometheus call without credentials
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})  # /metrics: a port of its own
OPEN_GRPC_METHODS = frozenset(f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady", "ModelReady"))


class BearerAuth:
    """ASGI middleware, outermost: every REST route but the probes needs
    `Authorization: Bearer <token>` with a token of the file; otherwise 401 with our JSON body and
    WWW-Authenticate, before the body is read (an unauthenticated caller holds no slot)."""

    def __init__(self, app, tokens: TokenFile):
        self.app, self.tokens = app, tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = header(scope, b"authorization")
        if self.tokens.accepts(given):
            return await self.app(scope, receive, send)
        await refuse(send, refusal(given, REST_HOW), extra=[(b"www-authenticate", challenge(given).encode())])


class BearerAuthInterceptor(aio.ServerInterceptor):
    """gRPC: every method but the health ones needs metadata `authorization: Bearer <token>`;
    otherwise UNAUTHENTICATED (all OIP methods are unary)."""

    def __init__(self, tokens: TokenFile):
        self.tokens = tokens

    async def intercept_service(self, continuation, details):
        if details.method in OPEN_GRPC_METHODS:
            return await continuation(details)
        given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if self.tokens.accepts(given):
            return await continuation(details)
        message = str(refusal(given, GRPC_HOW))

        async def deny(request, context):
            await context.abort(StatusCode.UNAUTHENTICATED, message)
        return unary_unary_rpc_method_handler(deny)


def version_refusal(name: str, asked: list[str], served: str | None) -> UnknownVersion | None:
    """The 404 for a model version asked for that is not the one served (None: all are)."""
    if served is None:
        return UnknownVersion(f"no model named {name!r} is served here")
    wrong = next((v for v in asked if v != served), None)
    return None if wrong is None else UnknownVersion(f"model {name} has no version {wrong!r} (it serves version {served})")


VERSIONED_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/.*)?$")


class ModelVersions:
    """ASGI middleware: OIP's versioned routes (`/v2/models/<m>/versions/<v>[/ready|/infer]`, and
    `?model_version=<v>`) name the version a model serves, or get a 404 naming the one it has.
    kserve 0.21 answers any version with 501, a server error. `versions()` maps each served
    model to its version."""

    def __init__(self, app, versions: Callable[[], dict[str, str]]):
        self.app, self.versions = app, versions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v2/models/"):
            return await self.app(scope, receive, send)
        path, query = scope["path"], parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        match = VERSIONED_PATH.match(path)
        name = unquote(match["name"]) if match else path.split("/")[3]
        asked = [unquote(match["version"])] if match else []
        asked += [v for k, v in query if k == "model_version" and v]
        if not asked:
            return await self.app(scope, receive, send)
        refusal = version_refusal(name, asked, self.versions().get(name))
        if refusal is not None:
            return await refuse(send, refusal)
        if match:
            path = f"/v2/models/{match['name']}{match['rest'] or ''}"
        query_string = urlencode([(k, v) for k, v in query if k != "model_version"]).encode()
        await self.app({**scope, "path": path, "raw_path": path.encode(), "query_string": query_string}, receive, send)


# The inference routes, per protocol: what a request's latency and status are recorded for
INFER_PATH = re.compile(r"^/(?:v1/models/(?P<v1>[^/]+):predict|v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer)$")
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
ModelMetrics = Callable[[str], PrometheusMetrics | None]  # a served model's metrics by name, else None


class RequestMetrics:
    """ASGI middleware, outermost: each inference request to a served model is timed from its
    arrival to the last byte of its answer, refusals at the edge (401, 413, 503) included, and
    recorded with its status class. Requests for models not served are not recorded (their names
    would be unbounded label values)."""

    def __init__(self, app, metrics_of: ModelMetrics):
        self.app, self.metrics_of = app, metrics_of

    async def __call__(self, scope, receive, send):
        match = INFER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        metrics = self.metrics_of(unquote(match["v1"] or match["v2"])) if match else None
        if metrics is None:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def timed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                metrics.request("rest", status, time.perf_counter() - started)
                status = None  # recorded

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if status is not None:  # no whole answer: the server failed it (or the client left)
                metrics.request("rest", 500, time.perf_counter() - started)


V1_ROUTE, V2_ROUTE = "/v1/models/{model}:predict", "/v2/models/{model}/infer"


class TraceRequests:
    """ASGI middleware, inside RequestMetrics: each inference request to a served model gets a
    server span (a child of the caller's `traceparent`), current while kserve's route and the model
    run, so the model's stage spans are its children; refusals at the edge are traced too. A 5xx
    marks it failed."""

    def __init__(self, app, tracer: Tracer, metrics_of: ModelMetrics):
        self.app, self.tracer, self.metrics_of = app, tracer, metrics_of

    async def __call__(self, scope, receive, send):
        match = INFER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        name = unquote(match["v1"] or match["v2"]) if match else None
        if name is None or self.metrics_of(name) is None:
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        route = V1_ROUTE if match["v1"] else V2_ROUTE
        attributes = {"http.request.method": scope.get("method", ""), "http.route": route,
                      "url.path": scope["path"], "model.name": name}
        status = 500

        async def traced_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.server_span(f"{scope.get('method', '')} {route}", carrier, attributes) as span:
            try:
                await self.app(scope, receive, traced_send)
            finally:
                self.tracer.mark(span, status >= 500, {"http.response.status_code": status})


def around_infer(handler, details, wrap):
    """ModelInfer's unary handler with `wrap(inner)` in place of `inner`; any other method's as it is."""
    if details.method != INFER_METHOD or handler is None or handler.unary_unary is None:
        return handler
    return unary_unary_rpc_method_handler(wrap(handler.unary_unary), request_deserializer=handler.request_deserializer,
                                          response_serializer=handler.response_serializer)


def call_status(context, failed: bool) -> int:
    """A finished call's gRPC status code: the one set, else OK, or UNKNOWN if the call raised."""
    code = context.code()
    return code.value[0] if code is not None else StatusCode.UNKNOWN.value[0] if failed else 0


class TraceInterceptor(aio.ServerInterceptor):
    """gRPC, inside RequestMetricsInterceptor: each ModelInfer call gets a server span, a child of
    the `traceparent` in its metadata; a server-side gRPC code (grpc_http_status 5xx) marks it failed."""

    def __init__(self, tracer: Tracer):
        self.tracer = tracer

    async def intercept_service(self, continuation, details):
        carrier = dict(details.invocation_metadata or ())
        service, method = INFER_METHOD.strip("/").split("/")

        def wrap(inner):
            async def traced(request, context):
                attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                              "model.name": request.model_name}
                with self.tracer.server_span(INFER_METHOD.strip("/"), carrier, attributes) as span:
                    failed = True
                    try:
                        response = await inner(request, context)
                        failed = False
                        return response
                    finally:
                        value = call_status(context, failed)
                        self.tracer.mark(span, grpc_http_status(value) >= 500, {"rpc.grpc.status_code": value})
            return traced

        return around_infer(await continuation(details), details, wrap)


class RequestMetricsInterceptor(aio.ServerInterceptor):
    """gRPC, outermost: each ModelInfer call to a served model, timed and recorded with the HTTP
    status class of its gRPC code, refusals by the other interceptors included."""

    def __init__(self, metrics_of: ModelMetrics):
        self.metrics_of = metrics_of

    async def intercept_service(self, continuation, details):
        def wrap(inner):
            async def timed(request, context):
                started, failed = time.perf_counter(), True
                try:
                    response = await inner(request, context)
                    failed = False
                    return response
                finally:
                    metrics = self.metrics_of(request.model_name)
                    if metrics is not None:
                        status = grpc_http_status(call_status(context, failed))
                        metrics.request("grpc", status, time.perf_counter() - started)
            return timed

        return around_infer(await continuation(details), details, wrap)

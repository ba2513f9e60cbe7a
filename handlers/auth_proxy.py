"""Bearer-token authentication in front of TorchServe. TorchServe 0.12's own token authorization
draws its keys at random when it starts and cannot take ours, so with authentication on, TorchServe's
inference listeners move to loopback and this proxy, run by the pod's exporter (handlers/exporter.py),
holds the public inference ports. It checks the token (REST `Authorization` header, gRPC metadata
`authorization`) against the token file (handlers/auth.py) before a body is read, then forwards the
request unchanged: REST with aiohttp, gRPC as raw bytes (no message is decoded), so every TorchServe
route and method answers as it does without the proxy, errors included. The exception: streamed
predictions, which would cost a worker (see STREAMING). It reads each REST body whole before
forwarding it, so it also bounds their size, number and arrival time (the runtime's RequestLimits).

Open without a token: the probes (REST /ping and /v2/health/*, gRPC Ping, ServerLive, ServerReady,
ModelReady) and CORS preflights (a browser sends those without credentials)."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass

import aiohttp
import grpc
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from handlers.auth import GRPC_HOW, REST_HOW, TokenFile, challenge, refusal
from handlers.errors import InputError, Overloaded, RequestTimeout, RequestTooLarge, Unavailable
from handlers.exporter import TS_GRPC, TS_OIP_GRPC
from handlers.settings import RequestLimits

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"})
OPEN_METHODS = frozenset({f"/{TS_GRPC}/Ping", *(f"/{TS_OIP_GRPC}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady"))})
# TorchServe 0.12 kills the worker when a handler that does not stream (ours) answers one of these
# (GRPCJob.response: a NullPointerException without the ts_stream_next header): refused here
STREAMING = {f"/{TS_GRPC}/StreamPredictions": "unary_stream", f"/{TS_GRPC}/StreamPredictions2": "stream_stream"}
NOT_STREAMED = "this model does not stream its predictions: call Predictions"
# Per-hop headers, and what the proxy sets itself: never copied from one side to the other
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length", "authorization", "expect"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # what the in-flight bound counts, as the runtime's
# gRPC metadata the channel sets itself
CALL_METADATA = frozenset({"authorization", "user-agent", "content-type", "te", "grpc-accept-encoding",
                           "grpc-encoding", "grpc-timeout"})


@dataclass(frozen=True)
class Upstream:
    """Where TorchServe's own inference listeners are (loopback) and what it accepts."""
    rest_url: str  # e.g. http://127.0.0.1:8093
    grpc_target: str  # e.g. 127.0.0.1:7072
    max_request_bytes: int  # TorchServe's max_request_size: refused here before it is read
    # the runtime's bounds, applied here: body_timeout_s (408), max_inflight (503 / RESOURCE_EXHAUSTED
    # beyond, reading included), retry_after_s (each 503's Retry-After)
    limits: RequestLimits = RequestLimits()
    cors_origin: str | None = None  # TorchServe's cors_allowed_origin: a refusal carries it too


def error_response(error: InputError, origin: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """Our JSON error body; the connection closes after it (an unread body is not waited for)."""
    response = web.Response(status=error.status, body=json.dumps(error.to_dict()).encode(),
                            content_type="application/json", headers=headers)
    if origin:  # without it a browser hides the status from the page
        response.headers["Access-Control-Allow-Origin"] = origin
    response.force_close()
    return response


class RestProxy:
    def __init__(self, upstream: Upstream, tokens: TokenFile):
        self.upstream, self.tokens = upstream, tokens
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.ServerRunner | None = None
        self.inflight = 0  # bodies are read whole here: their number bounds the proxy's memory

    def is_open(self, request: web.BaseRequest) -> bool:
        return request.path in OPEN_PATHS or (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers)

    def origin_for(self, request: web.BaseRequest) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and origin == self.upstream.cors_origin else None

    async def read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.upstream.max_request_bytes
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        origin = self.origin_for(request)
        if not self.is_open(request):
            given = request.headers.get("Authorization")
            if not self.tokens.accepts(given):
                return error_response(refusal(given, REST_HOW), origin, {"WWW-Authenticate": challenge(given)})
        if request.method not in BODY_METHODS:  # probes and metadata: nothing to hold
            return await self.forward(request, origin)
        limit = self.upstream.max_request_bytes
        if (request.content_length or 0) > limit:
            return error_response(RequestTooLarge(f"the body is {request.content_length} bytes, over the limit of {limit}"), origin)
        limits = self.upstream.limits
        if self.inflight >= limits.max_inflight:
            return error_response(Overloaded(f"the server holds {limits.max_inflight} requests already: retry"),
                                  origin, {"Retry-After": str(limits.retry_after_s)})
        self.inflight += 1
        try:
            return await self.forward(request, origin)
        finally:
            self.inflight -= 1

    async def forward(self, request: web.BaseRequest, origin: str | None) -> web.StreamResponse:
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version == aiohttp.HttpVersion11:
            # the client waits for this before its body (curl does above 1 KiB); asked only once
            # the caller is authenticated and admitted, so a refused one never sends the body
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await asyncio.wait_for(self.read_body(request), self.upstream.limits.body_timeout_s)
        except RequestTooLarge as e:
            return error_response(e, origin)
        except asyncio.TimeoutError:
            return error_response(RequestTimeout(
                f"the body did not arrive whole within {self.upstream.limits.body_timeout_s:g} s"), origin)
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS)
        try:
            async with self.session.request(request.method, self.upstream.rest_url + request.raw_path,
                                            headers=headers, data=body or None) as answer:
                out = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS)
                if answer.content_length is not None or request.method == "HEAD":
                    return web.Response(status=answer.status, reason=answer.reason, body=await answer.read(), headers=out)
                streamed = web.StreamResponse(status=answer.status, reason=answer.reason, headers=out)
                await streamed.prepare(request)  # TorchServe's streamed predictions: chunk by chunk
                async for chunk in answer.content.iter_any():
                    await streamed.write(chunk)
                await streamed.write_eof()
                return streamed
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            return error_response(Unavailable(f"TorchServe does not answer ({type(e).__name__})"), origin,
                                  {"Retry-After": str(self.upstream.limits.retry_after_s)})

    async def start(self, host: str, port: int) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        self.runner = web.ServerRunner(web.Server(self.handle), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


def forwarded(context) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or ()
                 if k not in CALL_METADATA and not k.startswith(":"))


class GrpcPassThrough(grpc.GenericRpcHandler):
    """Every method, by name: the token checked from the call's metadata, then the serialized
    messages passed to TorchServe's listener and back (its status and details on errors)."""

    def __init__(self, channel: grpc.aio.Channel, tokens: TokenFile):
        self.channel, self.tokens = channel, tokens
        self.forwarders: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details):
        kind = STREAMING.get(details.method, "unary_unary")
        if details.method not in OPEN_METHODS:
            given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
            if not self.tokens.accepts(given):
                return self.abort(kind, grpc.StatusCode.UNAUTHENTICATED, str(refusal(given, GRPC_HOW)))
        if kind != "unary_unary":
            return self.abort(kind, grpc.StatusCode.UNIMPLEMENTED, NOT_STREAMED)
        if details.method not in self.forwarders:
            self.forwarders[details.method] = self.forwarder(details.method)
        return self.forwarders[details.method]

    @staticmethod
    def abort(kind: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        async def abort(request, context):
            await context.abort(code, message)
        return getattr(grpc, f"{kind}_rpc_method_handler")(abort)

    def forwarder(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.unary_unary(method)  # no (de)serializers: bytes in, bytes out

        async def unary(request, context):
            try:
                return await call(request, metadata=forwarded(context), timeout=context.time_remaining())
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")
        return grpc.unary_unary_rpc_method_handler(unary)


class GrpcProxy:
    def __init__(self, upstream: Upstream, tokens: TokenFile):
        self.upstream, self.tokens = upstream, tokens
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self, host: str, port: int) -> None:
        limit = self.upstream.max_request_bytes
        self.channel = grpc.aio.insecure_channel(self.upstream.grpc_target, options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", -1)])
        self.server = grpc.aio.server(maximum_concurrent_rpcs=self.upstream.limits.max_inflight, options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)])
        self.server.add_generic_rpc_handlers((GrpcPassThrough(self.channel, self.tokens),))
        if self.server.add_insecure_port(f"{host}:{port}") == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        await self.server.start()

    async def stop(self, grace_s: float = 5) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.channel is not None:
            await self.channel.close()


class AuthProxy:
    """Both proxies on one event loop in a thread of their own (the exporter's main thread waits on
    TorchServe)."""

    def __init__(self, upstream: Upstream, tokens: TokenFile, rest_listen: tuple[str, int],
                 grpc_listen: tuple[str, int]):
        self.rest, self.grpc = RestProxy(upstream, tokens), GrpcProxy(upstream, tokens)
        self.listen = rest_listen, grpc_listen
        # uvloop: against asyncio's loop, interleaved, c=8 1.21x the req/s at 1.95 against 2.36 ms of
        # CPU per request, c=1 the same (2026-12-01, 2 cores, 5 rounds)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="auth-proxy", daemon=True)

    def start(self, timeout: float = 30) -> "AuthProxy":
        self.thread.start()
        (rest_host, rest_port), (grpc_host, grpc_port) = self.listen

        async def both():
            await self.rest.start(rest_host, rest_port)
            await self.grpc.start(grpc_host, grpc_port)
        asyncio.run_coroutine_threadsafe(both(), self.loop).result(timeout)
        log.info("auth: REST on %s:%d, gRPC on %s:%d, each checked before TorchServe", rest_host, rest_port,
                 grpc_host, grpc_port)
        return self

    def stop(self, timeout: float = 10) -> None:
        async def both():
            await self.grpc.stop()
            await self.rest.stop()
        try:
            asyncio.run_coroutine_threadsafe(both(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)

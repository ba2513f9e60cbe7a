"""The kserve 0.21 servers, bound to one address. kserve binds every interface and has no setting
for it; a pod passes --host 0.0.0.0, tests and laptops stay on loopback. Two kserve methods are
copied here with that one change (and our gRPC interceptor); tests/runtime/test_kserve_adapter.py
compares each with the installed kserve's source, so an upgrade that changes one fails by name."""
from __future__ import annotations

import asyncio
from concurrent import futures

from fastapi.exceptions import RequestValidationError
from grpc import StatusCode, aio
from kserve import Model, ModelServer, model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput, ModelNotFound
from kserve.logging import logger
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from prometheus_client import start_http_server
from starlette.middleware.cors import CORSMiddleware
from timing_asgi import TimingMiddleware

from handlers.auth import TokenFile
from handlers.settings import RequestLimits
from scripts.runtime.dataplane import ClassifierDataPlane
from scripts.runtime.model import RequestRefused
from scripts.runtime.transport import (BearerAuth, BearerAuthInterceptor, BinaryTensorBodies, InterceptorForRefusals,
                                       MetricsElsewhere, ModelVersions, NotAllowed, RequestGate, RequestMetrics,
                                       RequestMetricsInterceptor, TraceInterceptor, TraceRequests,
                                       invalid_body_response, model_config_unsupported, refused_response,
                                       version_refusal)
from scripts.runtime.tracing import Tracer

# What this module copies or relies on in kserve 0.21.0, by the sha256 (first 16 hex digits) of the
# installed source of each: a kserve whose copy differs fails tests/runtime/test_kserve_adapter.py
# by name, and the copy here must be brought in line with it.
COPIED_FROM_KSERVE = {
    "kserve.protocol.grpc.server.GRPCServer.start": "f4ea7b4eb6f0d9f7",      # BoundGRPCServer.start
    "kserve.model_server.ModelServer.start": "efa96502018b04e9",             # BoundModelServer.start
    "kserve.protocol.rest.server.RESTServer._add_middlewares": "eb71860ac9500c56",  # TimingMiddleware filter
    "kserve.protocol.rest.server.RESTServer.__init__": "c85b4ca79cab7f7c",   # self.config.host
}
# kserve's private names used here and in decode.py (an upgrade may drop any of them).
PRIVATE_NAMES = {
    "kserve.model_server.ModelServer": ("_register_and_check_atleast_one_model_is_ready", "_serve"),
    "kserve.protocol.grpc.server.GRPCServer": ("_port", "_data_plane", "_model_repository_extension", "_kwargs"),
    "kserve.protocol.grpc.servicer.InferenceServicer": ("_data_plane",),
    "kserve.protocol.model_repository_extension.ModelRepositoryExtension": ("_model_registry",),
}


class BoundRESTServer(RESTServer):
    def __init__(self, host: str, *args, limits: RequestLimits | None = None, tokens: TokenFile | None = None,
                 tracer: Tracer | None = None, cors_origin: str | None = None, **kwargs):
        self.limits = limits or RequestLimits()  # create_application (in super().__init__) reads these
        self.tokens, self.tracer, self.cors_origin = tokens, tracer, cors_origin
        super().__init__(*args, **kwargs)
        self.config.host = host  # kserve 0.21 hard-codes 0.0.0.0; uvicorn reads it at start-up

    def _add_middlewares(self, app) -> None:
        """kserve's middlewares without TimingMiddleware: it logs two kserve.trace lines per
        request (wall and CPU time), which /metrics already has as histograms. Measured: 0.3-0.6 ms
        of CPU less per request at concurrency 8 (A/B runs: README, section "Speed")."""
        if self.access_log_format:
            super()._add_middlewares(app)
            app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]

    def create_application(self) -> None:
        super().create_application()
        # registered after kserve's own handlers, so these replace its {"error": ...} bodies
        model_server.app.add_exception_handler(InvalidInput, refused_response)
        model_server.app.add_exception_handler(RequestValidationError, invalid_body_response)
        model_server.app.add_middleware(BinaryTensorBodies)
        models = self.dataplane.model_registry
        model_server.app.add_middleware(ModelVersions, versions=lambda: {
            name: getattr(m, "version", None) for name, m in models.get_models().items()})
        model_server.app.add_middleware(MetricsElsewhere)  # kserve's /metrics route: on its own port here
        model_server.app.add_middleware(RequestGate, limits=self.limits)  # the last added runs first
        if self.tokens is not None:
            model_server.app.add_middleware(BearerAuth, tokens=self.tokens)
        if self.tracer is not None:
            model_server.app.add_middleware(TraceRequests, tracer=self.tracer, metrics_of=metrics_lookup(models))
        model_server.app.add_middleware(RequestMetrics, metrics_of=metrics_lookup(models))
        if self.cors_origin:  # outermost: answers the browser's preflight, which carries no token
            model_server.app.add_middleware(CORSMiddleware, allow_origins=[self.cors_origin],
                                            allow_methods=["GET", "POST", "OPTIONS"],
                                            allow_headers=["Content-Type", "Authorization"])
        for path in ("/v2/models/{model_name}/config", "/v2/models/{model_name}/versions/{model_version}/config"):
            model_server.app.add_api_route(path, model_config_unsupported, methods=["GET"])


def metrics_lookup(registry):
    """A served model's metrics by name (None for a name no model has)."""
    return lambda name: getattr(registry.get_model(name), "metrics", None)


class FixedModels(ModelRepositoryExtension):
    """The models are the model store's, loaded at start-up (as TorchServe with its model API
    off): loading one that is loaded answers as kserve does, an unknown one 404 (kserve: 503), and
    unloading is refused (kserve would stop the model for good: it cannot load it again)."""

    def _known(self, model_name: str) -> None:
        if self._model_registry.get_model(model_name) is None:
            raise ModelNotFound(model_name)

    async def load(self, model_name: str) -> None:
        self._known(model_name)
        await super().load(model_name)

    async def unload(self, model_name: str) -> None:
        self._known(model_name)
        error = NotAllowed(f"model {model_name} stays loaded: this runtime serves the models of its model store, "
                           "loaded at start-up (roll out a new model version instead)")
        raise RequestRefused(error.status, error.to_dict())


class VersionedServicer(InferenceServicer):
    """kserve's gRPC servicer, whose ModelMetadata also names the model's versions: kserve 0.21
    drops them over gRPC (REST has them), and Triton's clients read them. A version asked for
    (the requests' `version` / `model_version`) must be the model's own: kserve 0.21 serves any
    version it is asked for; here another one gets NOT_FOUND, as on REST."""

    async def _check_version(self, name: str, version: str, context) -> None:
        served = getattr(self._data_plane.model_registry.get_model(name), "version", None)
        if version and served is not None:  # an unknown model: kserve's own NOT_FOUND
            refusal = version_refusal(name, [version], served)
            if refusal is not None:
                await context.abort(StatusCode.NOT_FOUND, str(refusal))

    async def ModelMetadata(self, request, context):
        await self._check_version(request.name, request.version, context)
        response = await super().ModelMetadata(request, context)
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        response.versions.extend(metadata.get("versions", []))
        return response

    async def ModelReady(self, request, context):
        await self._check_version(request.name, request.version, context)
        return await super().ModelReady(request, context)

    async def ModelInfer(self, request, context):
        await self._check_version(request.model_name, request.model_version, context)
        return await super().ModelInfer(request, context)


class BoundGRPCServer(GRPCServer):
    def __init__(self, host: str, *args, limits: RequestLimits | None = None, tokens: TokenFile | None = None,
                 tracer: Tracer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.address = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
        self.limits = limits or RequestLimits()
        self.tokens, self.tracer = tokens, tracer

    async def start(self, max_workers: int) -> None:
        """kserve 0.21's GRPCServer.start, listening on `self.address` instead of "[::]:port",
        without an ERROR traceback for each refused request, and with our limits: a message over
        max_request_bytes gets RESOURCE_EXHAUSTED from gRPC itself before it is handled, and so
        does a call beyond max_inflight at once."""
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(RequestMetricsInterceptor(metrics_lookup(self._data_plane.model_registry)),
                          *([TraceInterceptor(self.tracer)] if self.tracer is not None else []),
                          *([BearerAuthInterceptor(self.tokens)] if self.tokens is not None else []),
                          LoggingInterceptor(), InterceptorForRefusals()),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self.limits.max_request_bytes)],
            maximum_concurrent_rpcs=self.limits.max_inflight)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            VersionedServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(self.address)
        logger.info("Starting gRPC server on %s", self.address)
        await self._server.start()
        await self._server.wait_for_termination()


class BoundModelServer(ModelServer):
    """kserve.ModelServer whose listeners bind `host`: kserve 0.21 binds every interface and has no
    setting for it. A pod passes --host 0.0.0.0; tests and laptops stay on loopback."""

    def __init__(self, host: str, limits: RequestLimits | None = None, tokens: TokenFile | None = None,
                 tracer: Tracer | None = None, metrics_port: int | None = None, cors_origin: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.host, self.cors_origin = host, cors_origin  # cors_origin: the try-it page's, allowed to call
        self.metrics_port = metrics_port  # None: no /metrics listener (the HTTP port's answers 404 either way)
        self.limits = limits or RequestLimits()
        self.tokens = tokens  # None: no authentication
        self.tracer = tracer  # None: no spans
        self.dataplane = ClassifierDataPlane(model_registry=self.registered_models)
        self.model_repository_extension = FixedModels(model_registry=self.registered_models)

    def start(self, models: list[Model]) -> None:
        # kserve 0.21's ModelServer.start for one REST process (no TLS), with `host` passed down
        self._register_and_check_atleast_one_model_is_ready(models)
        if self.metrics_port is not None:  # kserve's REGISTRY, which the models' metrics join
            start_http_server(self.metrics_port, addr=self.host)
        self._rest_server = BoundRESTServer(
            self.host, FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, access_log_format=self.access_log_format, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive, limits=self.limits,
            tokens=self.tokens, tracer=self.tracer, cors_origin=self.cors_origin)
        self._grpc_server = BoundGRPCServer(
            self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
            kwargs=vars(model_server.args), grace_period=self.grace_period, limits=self.limits, tokens=self.tokens,
            tracer=self.tracer)
        self.servers = [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        with asyncio.Runner(loop_factory=loop_factory(self.event_loop)) as runner:
            # kserve 0.21 configures asyncio.get_event_loop() and then asyncio.run()s on a new,
            # plain asyncio loop: here the loop it configures is the one that serves
            runner.get_loop()
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())


def loop_factory(event_loop: str):
    """kserve's --event_loop (auto|asyncio|uvloop) as uvicorn reads it: auto is uvloop when it is
    installed. Measured at concurrency 8: 0.1-0.25 ms of CPU less per REST request than asyncio."""
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
            return uvloop.new_event_loop
        except ImportError:
            if event_loop == "uvloop":
                raise
    return asyncio.new_event_loop

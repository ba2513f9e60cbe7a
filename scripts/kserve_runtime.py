"""KServe-native runtime for the same `.mar` files TorchServe serves: a `kserve.ModelServer` with
one `kserve.Model` per archive, built on the archive's own code path (`ImageClassifier.load`,
`handlers.inputs.parse_row`, `handlers.responses.render`), so each request gets TorchServe's body.

    python -m scripts.kserve_runtime --model-store build/serve/model-store [--host 127.0.0.1]
                                     [--http-port 8085] [--grpc-port 8086]

Serves KServe v1 REST (`POST /v1/models/<m>:predict`), Open Inference Protocol v2 REST
(`POST /v2/models/<m>/infer`, base64 strings in a BYTES input) and v2 gRPC
(`inference.GRPCInferenceService`, raw image bytes in a BYTES input), OIP health and metadata, and
KServe's Prometheus `/metrics` on the HTTP port. kserve's own flags (e.g. `--enable_docs_url true`)
are accepted too; kserve reads them itself when it is imported.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import Request
from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
from fastapi.responses import JSONResponse
from grpc import StatusCode, aio
from PIL import Image
from kserve import Model, ModelServer, model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InferenceError, InvalidInput
from kserve.logging import logger
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import (InferOutput, InferRequest, InferResponse,
                                        deserialize_bytes_tensor, to_http_parameters)
from kserve.protocol.rest.server import RESTServer
from timing_asgi import TimingMiddleware

from handlers.classifier import ImageClassifier, Result
from handlers.errors import InputError, MalformedRequest
from handlers.inputs import ParsedRequest, parse_row
from handlers.metrics import Observation, PrometheusMetrics, Stopwatch
from handlers.responses import render
from handlers.spec import ModelSpec
from scripts.archive import read_manifest
from scripts.batching import MicroBatcher
from scripts.settings import ServingSettings

PLATFORM = "pytorch"
INPUT_NAME = "image"
# kserve flags this runtime does not act on: one REST process, gRPC always on, no TLS
UNUSED_KSERVE_FLAGS = ("--http_port", "--grpc_port", "--workers", "--enable_grpc", "--ssl_certfile",
                       "--ssl_keyfile")


class ArchiveLoadError(RuntimeError):
    pass


class RequestRefused(InvalidInput):
    """A request answered with render()'s error body. An InvalidInput, so kserve's gRPC interceptor
    maps it to INVALID_ARGUMENT with the message; our REST handler sends the body and status."""

    def __init__(self, status: int, body: dict):
        super().__init__(body["error"])
        self.status = status
        self.body = body


# --- request decoding: kserve's decoded request → handlers.inputs.ParsedRequest -----------------

def _elements(tensor) -> list | None:
    """The BYTES elements of an OIP input tensor: JSON `data`, gRPC `bytes_contents`, or gRPC's
    `raw_input_contents` (length-prefixed elements)."""
    if tensor._raw_data is None:  # kserve keeps raw contents only on this private attribute
        return tensor.data
    if tensor.datatype != "BYTES":
        return None  # parse_row refuses the datatype before it looks at the data
    try:
        return deserialize_bytes_tensor(tensor._raw_data).tolist()
    except struct.error:  # a length prefix past the end: the client's framing
        raise MalformedRequest(f'input "{tensor.name}": raw_input_contents is not a valid BYTES '
                               'tensor (4-byte little-endian length before each element)') from None


def parse_oip(request: InferRequest, max_bytes: int) -> ParsedRequest:
    """An OIP v2 request (REST or gRPC) through parse_row's own v2 rules. gRPC carries each image as
    its raw bytes, REST JSON as base64: a raw element enters parse_row as an empty base64 string,
    so the envelope checks and their messages stay parse_row's, and is put back afterwards."""
    try:
        tensors, raw = [], {}
        for i, tensor in enumerate(request.inputs):
            data = _elements(tensor)
            if i == 0 and isinstance(data, list):
                raw = {j: bytes(x) for j, x in enumerate(data) if isinstance(x, (bytes, bytearray))}
                data = ["" if j in raw else x for j, x in enumerate(data)]
            tensors.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                            "parameters": to_http_parameters(tensor.parameters or {}), "data": data})
    except InputError as e:
        return ParsedRequest(protocol="v2", error=e)
    body = {"id": request.id or None, "parameters": to_http_parameters(request.parameters or {}),
            "inputs": tensors}
    parsed = parse_row({"body": body}, max_bytes)
    if parsed.error is None:
        parsed.images = [raw.get(j, image) for j, image in enumerate(parsed.images)]
    return parsed


def parse_request(payload, headers: dict[str, str], max_bytes: int) -> ParsedRequest:
    """Whatever kserve decoded: an InferRequest (v2 REST, gRPC), a JSON value (v1 REST) or the raw
    body (a non-JSON content type on the v1 route, as TorchServe's native protocol)."""
    if isinstance(payload, InferRequest):
        return parse_oip(payload, max_bytes)
    return parse_row({"body": payload}, max_bytes, headers.get("content-type"), headers.get("x-topk"))


# --- the model ---------------------------------------------------------------------------------

@dataclass
class Job:
    request: ParsedRequest
    grpc: bool
    results: list[Result] = field(default_factory=list)

# Images per forward pass: requests that queue while one batch runs form the next (no waiting)
MAX_BATCH_IMAGES = 32
# Batches faster than this on average run on the event loop, skipping two thread hand-offs
INLINE_BELOW_MS = 3.0  # measured: docs/bench/bench.md


def grpc_response(body: dict) -> InferResponse:
    outputs = [InferOutput(name=o["name"], shape=o["shape"], datatype=o["datatype"], data=o["data"])
               for o in body["outputs"]]
    return InferResponse(response_id=body["id"], model_name=body["model_name"],
                         model_version=body["model_version"], infer_outputs=outputs)


class MarModel(Model):
    """One `.mar`: unpacked into a private directory and loaded with the code TorchServe's worker
    runs (`ImageClassifier.load`)."""

    def __init__(self, mar: Path, unpack_root: Path, device: str | None = None,
                 inline_below_ms: float = 0.0):
        manifest = read_manifest(mar)["model"]
        super().__init__(manifest["modelName"], return_response_headers=True)
        self.mar = mar
        self.version: str = manifest["modelVersion"]
        self.model_dir = unpack_root / f"{self.name}-{self.version}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.classifier: ImageClassifier | None = None
        self.inline_below_ms = inline_below_ms

    def load(self) -> bool:
        with zipfile.ZipFile(self.mar) as z:
            z.extractall(self.model_dir)
        spec = ModelSpec.load(self.model_dir)
        if (spec.name, spec.version) != (self.name, self.version):
            raise ValueError(f"MANIFEST.json says {self.name} v{self.version}, model_spec.json "
                             f"says {spec.name} v{spec.version}")
        started = time.perf_counter()
        self.classifier = ImageClassifier.load(self.model_dir, device=self.device)
        # the handler metrics TorchServe exports, same names and labels (handlers/metrics.py)
        self.metrics = PrometheusMetrics(self.name, self.version)
        self.metrics.model_loaded(time.perf_counter() - started)
        self.batcher = MicroBatcher(self._run_batch, max_items=MAX_BATCH_IMAGES,
                                    inline_below_s=self.inline_below_ms / 1000)
        self.batcher.mean_s = self.warm_up()
        self.ready = True
        logger.info("loaded %s v%s from %s on %s (%d classes)", self.name, self.version,
                    self.mar.name, self.device, len(spec.labels))
        return self.ready

    def warm_up(self) -> float:
        """One blank image through the whole pipeline before the model is ready (not in the
        metrics): the first forward pass pays one-off set-up, which would otherwise land on a
        user's request. Returns the seconds a warm call takes, the batcher's first estimate."""
        p = self.classifier.spec.preprocess
        buf = io.BytesIO()
        Image.new("L" if p.channels == 1 else "RGB", (p.width, p.height), p.background).save(buf, "PNG")
        self.classifier.predict([buf.getvalue()])
        started = time.perf_counter()
        self.classifier.predict([buf.getvalue()])
        return time.perf_counter() - started

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        # [N, k]: k is the spec's topk unless a request asks for another
        return [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]

    def validate(self, payload):
        return payload  # parse_request already validated it; kserve's check expects dicts

    async def preprocess(self, payload, headers: dict[str, str] | None = None) -> Job:
        grpc = isinstance(payload, InferRequest) and payload.from_grpc
        return Job(parse_request(payload, headers or {}, self.classifier.max_bytes), grpc)

    def _run_batch(self, items: list[tuple[bytes, int | None]]) -> list[Result]:
        """One forward pass for the images of every request in a micro-batch (a worker thread:
        the event loop keeps answering); metrics per batch, as TorchServe's handler records them."""
        obs = Observation()
        with Stopwatch(obs, "handle"):
            results = self.classifier.predict([image for image, _ in items], [k for _, k in items], obs)
        self.metrics.record(obs)
        return results

    async def predict(self, job: Job, headers=None, response_headers=None) -> Job:
        if job.request.error is None:
            job.results = await self.batcher.submit([(image, job.request.topk) for image in job.request.images])
        return job

    async def postprocess(self, job: Job, headers=None, response_headers=None) -> dict | InferResponse:
        status, body = render(job.request, job.results, self.classifier.spec)
        if job.request.error is not None:  # refused before any batch: counted here
            obs = Observation()
            obs.rejected[job.request.error.reason] += 1
            self.metrics.record(obs)
        if status != 200:
            raise RequestRefused(status, body)
        if response_headers is not None:
            response_headers["x-model-version"] = self.version
        return grpc_response(body) if job.grpc else body


class ClassifierDataPlane(DataPlane):
    def decode(self, body, headers, protocol_version: str = "v1", model_name: str | None = None):
        """kserve reads application/octet-stream as JSON; TorchServe's native protocol sends raw
        image bytes with it. A v1 body that is not JSON-shaped passes through raw, as image/* does."""
        if (isinstance(body, bytes) and protocol_version.lower() == "v1" and headers
                and headers.get("content-type", "").split(";")[0].strip() == "application/octet-stream"
                and body.lstrip()[:1] not in (b"{", b"[")):
            return body, {}
        return super().decode(body, headers, protocol_version, model_name)

    async def model_metadata(self, model_name: str) -> dict:
        """OIP model metadata with the model's version and platform (kserve leaves them out)."""
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        if isinstance(model, MarModel):
            metadata.update(versions=[model.version], platform=PLATFORM)
        return metadata


# --- the servers: kserve 0.21's, bound to --host -----------------------------------------------

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


class BoundRESTServer(RESTServer):
    def __init__(self, host: str, *args, **kwargs):
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
        model_server.app.add_exception_handler(InferenceError, undecodable_response)


class InterceptorForRefusals(ExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator, context, method_name: str):
        if isinstance(ex, RequestRefused):  # a client's bad input: no ERROR log with a traceback
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        else:
            await super().handle_exception(ex, request_or_iterator, context, method_name)


class BoundGRPCServer(GRPCServer):
    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.address = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"

    async def start(self, max_workers: int) -> None:
        """kserve 0.21's GRPCServer.start, listening on `self.address` instead of "[::]:port" (and
        without an ERROR traceback for each refused request)."""
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), InterceptorForRefusals()),
            options=[(f"grpc.{name}", self._kwargs.get(f"grpc_{name}"))
                     for name in ("max_send_message_length", "max_receive_message_length")])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(self.address)
        logger.info("Starting gRPC server on %s", self.address)
        await self._server.start()
        await self._server.wait_for_termination()


class BoundModelServer(ModelServer):
    """kserve.ModelServer whose listeners bind `host`: kserve 0.21 binds every interface and has no
    setting for it. A pod passes --host 0.0.0.0; tests and laptops stay on loopback."""

    def __init__(self, host: str, **kwargs):
        super().__init__(**kwargs)
        self.host = host
        self.dataplane = ClassifierDataPlane(model_registry=self.registered_models)

    def start(self, models: list[Model]) -> None:
        # kserve 0.21's ModelServer.start for one REST process (no TLS), with `host` passed down
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = BoundRESTServer(
            self.host, FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
            self.http_port, access_log_format=self.access_log_format, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
        self._grpc_server = BoundGRPCServer(
            self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
            kwargs=vars(model_server.args), grace_period=self.grace_period)
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


# --- command line ------------------------------------------------------------------------------

# KServe sets MODEL_INIT_MODE=async where the model appears after the runtime starts (a modelcar
# sidecar links its image's /models into /mnt/models once it runs): wait for it instead of failing.
MODEL_INIT_MODE_ENV, ASYNC_WAIT_SECONDS = "MODEL_INIT_MODE", 600


def wait_for_model_store(model_store: Path, timeout: float = ASYNC_WAIT_SECONDS, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not any(Path(model_store).glob("*.mar")):
        if time.monotonic() > deadline:
            raise ArchiveLoadError(f"no .mar files in {model_store} after waiting {timeout:.0f} s "
                                   f"({MODEL_INIT_MODE_ENV}=async)")
        time.sleep(poll)


def load_models(model_store: Path, unpack_root: Path, inline_below_ms: float = 0.0) -> list[MarModel]:
    mars = sorted(Path(model_store).glob("*.mar"))
    if not mars:
        raise ArchiveLoadError(f"no .mar files in {model_store}")
    models: dict[str, MarModel] = {}
    for mar in mars:
        try:
            model = MarModel(mar, unpack_root, inline_below_ms=inline_below_ms)
            if model.name in models:
                raise ValueError(f"model {model.name!r} is also in {models[model.name].mar.name}")
            model.load()
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError) as e:
            raise ArchiveLoadError(f"{mar.name}: {type(e).__name__}: {e}") from e
        models[model.name] = model
    return list(models.values())


def get_args_parser(settings: ServingSettings | None = None) -> argparse.ArgumentParser:
    # kserve parses sys.argv itself at import time (parse_known_args, underscore flags such as
    # --http_port): ours are dashed and none is a prefix of one of kserve's, so neither side takes
    # the other's
    s = settings or ServingSettings.from_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model-store", type=Path, required=True, help="directory holding the .mar files")
    p.add_argument("--host", default=s.host, help="address both listeners bind (a pod: 0.0.0.0)")
    p.add_argument("--http-port", type=int, default=s.kserve_http_port, help="v1/v2 REST and /metrics")
    p.add_argument("--grpc-port", type=int, default=s.kserve_grpc_port, help="OIP v2 gRPC")
    p.add_argument("--inline-below-ms", type=float, default=INLINE_BELOW_MS,
                   help="run a model's batches on the event loop while they take less than this on "
                        "average (0: always in a worker thread)")
    return p


def given(args: list[str], flag: str) -> bool:
    return any(a.split("=")[0] == flag for a in args)


def main(argv: list[str] | None = None) -> int:
    # kserve 0.21's endpoints use ORJSONResponse, deprecated by FastAPI: one warning per request
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated", category=FastAPIDeprecationWarning)
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    kserve_args = model_server.parser.parse_args(rest)  # the rest must be kserve's own flags: a typo stops here
    unused = [flag for flag in UNUSED_KSERVE_FLAGS if given(rest, flag)]
    if unused:
        parser.error(f"{', '.join(unused)}: not used by this runtime (one REST process, gRPC always on, "
                     "no TLS; ports: --http-port, --grpc-port)")
    with tempfile.TemporaryDirectory(prefix="kserve-runtime-") as unpack_root:
        try:
            if os.environ.get(MODEL_INIT_MODE_ENV) == "async":
                wait_for_model_store(args.model_store)
            models = load_models(args.model_store, Path(unpack_root), args.inline_below_ms)
        except ArchiveLoadError as e:
            print(f"kserve_runtime: error: {e}", file=sys.stderr)
            return 2
        # kserve logs a latency line per request by default; /metrics already has those timings
        latency_log = kserve_args.enable_latency_logging if given(rest, "--enable_latency_logging") else False
        BoundModelServer(args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                         enable_latency_logging=latency_log).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())

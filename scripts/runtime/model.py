"""One kserve.Model per `.mar`: unpacked and loaded with the code TorchServe's worker runs
(`ImageClassifier.load`); requests micro-batched into forward passes; answers rendered with the
handler's bodies and recorded with its metrics."""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from kserve import Model
from kserve.errors import InvalidInput
from kserve.logging import logger
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput, to_http_parameters

from handlers.classifier import ImageClassifier, Result
from handlers.errors import MalformedRequest, Overloaded
from handlers.inputs import ParsedRequest
from handlers.metrics import Observation, PrometheusMetrics, Stopwatch
from handlers.responses import render
from handlers.settings import RequestLimits
from handlers.spec import ModelSpec, ServingPolicy
from scripts.runtime.batching import MicroBatcher, QueueFull
from scripts.runtime.decode import parse_request
from scripts.runtime.mar import read_manifest
from scripts.runtime.tracing import RequestTrace, Tracer, record_batch, stage

INPUT_NAME = "image"


class RequestRefused(InvalidInput):
    """A request answered with render()'s error body. An InvalidInput, so kserve's gRPC interceptor
    maps it to INVALID_ARGUMENT with the message; our REST handler sends the body and status."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(body["error"])
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Job:
    request: ParsedRequest
    oip: InferRequest | None  # an OIP v2 request (REST or gRPC): which outputs, and in which form
    results: list[Result] = field(default_factory=list)
    trace: RequestTrace | None = None  # its stage spans' parent, when the request is traced

    @property
    def grpc(self) -> bool:
        return self.oip is not None and self.oip.from_grpc


# On a GPU: one pass at a time, as many queued images as fit a pass
GPU_BATCHING = ServingPolicy(workers=1, batch_size=32)
# Batches faster than this on average run on the event loop, skipping two thread hand-offs
INLINE_BELOW_MS = 3.0  # measured: docs/bench/bench.md


def unknown_outputs(request: InferRequest, known: list[str]) -> MalformedRequest | None:
    for i, wanted in enumerate(request.request_outputs or []):
        if wanted.name not in known:
            return MalformedRequest(f'outputs[{i}]: this model has no output "{wanted.name}" '
                                    f"(it has {', '.join(map(repr, known))})")
    return None


def oip_response(body: dict, request: InferRequest) -> InferResponse:
    """The OIP v2 body as kserve encodes it, with the outputs the request asks for in the form it
    asks for. gRPC answers in raw_output_contents, as Triton's servers do and its clients read
    (typed contents if the request sets binary_data_output false). REST answers in JSON unless the
    request sets binary_data_output, or binary_data on a requested output (the binary tensor
    extension: JSON, then the outputs' bytes)."""
    outputs = [InferOutput(name=o["name"], shape=o["shape"], datatype=o["datatype"], data=o["data"])
               for o in body["outputs"]]
    binary = to_http_parameters(request.parameters or {}).get("binary_data_output", request.from_grpc)
    wanted = request.request_outputs or []
    if request.from_grpc and wanted:
        outputs = [next(o for o in outputs if o.name == w.name) for w in wanted]
    elif wanted:  # each output's own binary_data wins over the request's binary_data_output
        wanted = [RequestedOutput(w.name, {**(w.parameters or {}), "binary_data": bool(
            binary if w.binary_data is None else w.binary_data)}) for w in wanted]
    return InferResponse(response_id=body["id"], model_name=body["model_name"], model_version=body["model_version"],
                         infer_outputs=outputs, use_binary_outputs=bool(binary),
                         requested_outputs=None if request.from_grpc else wanted or None)


class MarModel(Model):
    """One `.mar`: unpacked into a private directory and loaded with the code TorchServe's worker
    runs (`ImageClassifier.load`)."""

    def __init__(self, mar: Path, unpack_root: Path, device: str | None = None,
                 inline_below_ms: float = 0.0, limits: RequestLimits | None = None, tracer: Tracer | None = None):
        manifest = read_manifest(mar)["model"]
        super().__init__(manifest["modelName"], return_response_headers=True)
        self.mar = mar
        self.version: str = manifest["modelVersion"]
        self.model_dir = unpack_root / f"{self.name}-{self.version}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.classifier: ImageClassifier | None = None
        self.batcher: MicroBatcher | None = None
        self.inline_below_ms = inline_below_ms
        self.limits = limits or RequestLimits()
        self.tracer = tracer  # None: no spans

    def load(self) -> bool:
        with zipfile.ZipFile(self.mar) as z:
            z.extractall(self.model_dir)
        spec = ModelSpec.load(self.model_dir)
        if (spec.name, spec.version) != (self.name, self.version):
            raise ValueError(f"MANIFEST.json says {self.name} v{self.version}, model_spec.json "
                             f"says {spec.name} v{spec.version}")
        # images per pass and passes at once: the archive's policy on the CPU (requests that queue
        # while the passes run form the next batches; nothing waits for a batch to fill)
        serving = spec.serving if torch.device(self.device).type == "cpu" else GPU_BATCHING
        # the handler metrics TorchServe exports, same names and labels (handlers/metrics.py)
        self.metrics = PrometheusMetrics(self.name, self.version)
        self.batcher = MicroBatcher(self._run_batch, max_items=serving.batch_size, workers=serving.workers,
                                    max_pending=self.limits.queue_size, on_wait=self.metrics.queue_wait)
        batcher = self.batcher
        self.metrics.watch_queue(depth=lambda: len(batcher.pending), inflight=lambda: batcher.inside)
        # Loaded and warmed up on the batch threads, where its passes run: torch's OpenMP pool
        # belongs to the thread that first runs a parallel op, and a second pool (this thread's)
        # would throttle the first one's threads (measured: half the images/s with 2 threads).
        started = time.perf_counter()
        self.classifier = self.batcher.on_worker(0, ImageClassifier.load, self.model_dir, device=self.device)
        self.metrics.model_loaded(time.perf_counter() - started, spec)
        self.batcher.mean_s = max(self.batcher.on_worker(n, self.warm_up) for n in range(serving.workers))
        if (self.classifier.options.torch_threads or 1) == 1:  # more: the passes stay on their thread
            self.batcher.inline_below_s = self.inline_below_ms / 1000
        self.ready = True
        logger.info("loaded %s v%s from %s on %s (%d classes; %s; %d batch worker(s), up to %d images each)",
                    self.name, self.version, self.mar.name, self.device, len(spec.labels),
                    self.classifier.options.describe(), serving.workers, serving.batch_size)
        return self.ready

    def stop(self) -> None:
        super().stop()
        if self.batcher is not None:
            self.batcher.close()

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
        oip = payload if isinstance(payload, InferRequest) else None
        trace = self.tracer.request() if self.tracer is not None else None
        with stage(trace, "decode"):
            job = Job(parse_request(payload, headers or {}, self.classifier.max_bytes,
                                    self.limits.max_images_per_request), oip, trace=trace)
        if oip is not None and job.request.error is None:
            job.request.error = unknown_outputs(oip, [o["name"] for o in self.get_output_types()])
        return job

    def _run_batch(self, items: list[tuple[bytes, int | None, RequestTrace | None]]) -> list[Result]:
        """One forward pass for the images of every request in a micro-batch (a worker thread:
        the event loop keeps answering); metrics per batch, as TorchServe's handler records them,
        and the stage spans of the batch's traced requests."""
        traces = list({id(t): t for _, _, t in items if t is not None}.values())
        obs = Observation(intervals={} if traces else None)
        with Stopwatch(obs, "handle"):
            results = self.classifier.predict([image for image, _, _ in items], [k for _, k, _ in items], obs)
        self.metrics.record(obs)
        record_batch(traces, obs, len(items))
        return results

    async def predict(self, job: Job, headers=None, response_headers=None) -> Job:
        if job.request.error is None:
            try:
                if job.trace is not None:
                    job.trace.queued()
                job.results = await self.batcher.submit([(image, job.request.topk, job.trace)
                                                         for image in job.request.images])
            except QueueFull as e:
                job.request.error = Overloaded(f"model {self.name} is at capacity: {e}; retry after "
                                               f"{self.limits.retry_after_s} s")
        return job

    async def postprocess(self, job: Job, headers=None, response_headers=None) -> dict | InferResponse:
        status, body = render(job.request, job.results, self.classifier.spec)
        if job.request.error is not None:  # refused before any batch: counted here
            obs = Observation()
            obs.rejected[job.request.error.reason] += 1
            self.metrics.record(obs)
        if status != 200:
            retry = {"retry-after": str(self.limits.retry_after_s)} if status == Overloaded.status else None
            raise RequestRefused(status, body, retry)
        if response_headers is not None:
            response_headers["x-model-version"] = self.version
        if job.oip is not None and (job.grpc or job.oip.request_outputs or job.oip.use_binary_outputs):
            return oip_response(body, job.oip)
        return body  # as TorchServe's handler writes it

"""Handler and request metrics: the one definition of names, types, labels and buckets, for
every runtime. Both runtimes write them with prometheus_client: the KServe-native runtime in its
own process; TorchServe's workers in multiprocess mode (PROMETHEUS_MULTIPROC_DIR), which
handlers/exporter.py serves on the pod's metrics port beside the frontend's own metrics, because
TorchServe 0.12's frontend builds every histogram with the default buckets (5 ms .. 10 s: its
PrometheusHistogram has no bucket setting), below which a fast model's quantiles are only
interpolation. A TorchServe without the exporter (a stock image) still gets the handler metrics
through its frontend (`TorchServeMetrics`), with those default buckets. Every label has a bounded
set of values: stages, rejection reasons, protocols, status classes and the model's class labels."""
from __future__ import annotations

import socket
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

STAGE_SECONDS = "image_handler_stage_seconds"  # histogram; stage: one of STAGES
BATCH_SIZE = "image_handler_batch_size"  # histogram: images per forward pass
PREDICTIONS = "image_handler_predictions_total"  # counter; label: the top-1 class
REJECTED = "image_handler_rejected_total"  # counter; reason: InputError.reason
MODEL_LOAD_SECONDS = "image_handler_model_load_seconds"  # gauge
MODEL_INFO = "image_handler_model_info"  # gauge, always 1; format, run_id (the registry's training run or "")
STAGES = ("preprocess", "inference", "postprocess", "handle")
# Per request, server side, from its arrival to its answer; protocol: rest|grpc, code: 2xx|4xx|5xx
REQUEST_SECONDS = "image_classifier_request_seconds"  # histogram
PROTOCOLS, CODES = ("rest", "grpc"), ("2xx", "4xx", "5xx")
# The KServe-native runtime's queue in front of the forward passes (TorchServe's own:
# ts_queue_latency_microseconds)
QUEUE_WAIT_SECONDS = "image_classifier_queue_wait_seconds"  # histogram: a request's wait for its batch
QUEUE_DEPTH = "image_classifier_queue_depth"  # gauge: requests waiting for a batch
INFLIGHT = "image_classifier_inflight_requests"  # gauge: requests waiting or in a batch

# Latency buckets from 0.1 ms to 10 s, five per decade (the R5 series 1, 1.6, 2.5, 4, 6.3), so that
# histogram_quantile lands within ~60 % of the truth anywhere a model's latency can be.
LATENCY_BUCKETS = tuple(round(m * 10.0 ** e, 6) for e in range(-4, 1) for m in (1, 1.6, 2.5, 4, 6.3)) + (10.0,)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable

# Labels TorchServe's frontend adds to every handler metric; the KServe runtime sets them too.
BASE_LABELS = ("ModelName", "ModelVersion", "Level", "Hostname")


@dataclass
class Observation:
    """What one batch measured; filled by ImageClassifier.predict and the runtime's adapter."""

    seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    predicted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    # Each stage's wall-clock span (epoch ns: first start, last end), kept only when a trace needs
    # it (None: not kept, no clock read)
    intervals: dict[str, tuple[int, int]] | None = None


class Stopwatch:
    def __init__(self, obs: Observation | None, stage: str):
        self.obs, self.stage = obs, stage

    def __enter__(self):
        self.start = time.perf_counter()
        if self.obs is not None and self.obs.intervals is not None:
            self.start_ns = time.time_ns()
        return self

    def __exit__(self, *exc):
        if self.obs is not None:
            self.obs.seconds[self.stage] = self.obs.seconds.get(self.stage, 0.0) + time.perf_counter() - self.start
            if self.obs.intervals is not None:
                first = self.obs.intervals.get(self.stage, (self.start_ns, 0))[0]
                self.obs.intervals[self.stage] = (first, time.time_ns())


# gRPC status codes of a server fault or overload (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
# INTERNAL, UNAVAILABLE, DATA_LOSS): a 5xx; every other code but OK is the caller's (a 4xx)
GRPC_SERVER_CODES = frozenset({2, 4, 12, 13, 14, 15})


def grpc_http_status(code: int) -> int:
    """The HTTP status a gRPC status code counts as (its class is what the metrics keep)."""
    return 200 if code == 0 else 500 if code in GRPC_SERVER_CODES else 400


def status_class(status: int) -> str:
    """An HTTP status as the `code` label: 2xx, 4xx or 5xx (anything not 2xx/4xx counts as 5xx)."""
    return f"{status // 100}xx" if status // 100 in (2, 4) else "5xx"


def info_labels(spec) -> dict[str, str]:
    """What MODEL_INFO says about a ModelSpec: its network's format and the training run the
    registry gave it (model_spec.json "source"; "" for an archive built from a checkpoint file)."""
    return {"format": spec.format, "run_id": spec.source.get("run_id", "")}


class TorchServeMetrics:
    """Writes an Observation to TorchServe's metrics cache (`context.metrics`)."""

    def __init__(self, cache, version: str):
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        self.cache, self.types, self.version = cache, MetricTypes, version
        self.dim = lambda name, value: Dimension(name, value)

    def _add(self, name, value, unit, metric_type, **labels):
        dims = [self.dim("ModelVersion", self.version)] + [self.dim(k, str(v)) for k, v in labels.items()]
        self.cache.add_metric(name, value, unit, None, dims, metric_type)

    def model_loaded(self, seconds: float, spec) -> None:
        self._add(MODEL_LOAD_SECONDS, seconds, "s", self.types.GAUGE)
        self._add(MODEL_INFO, 1, "count", self.types.GAUGE, **info_labels(spec))

    def record(self, obs: Observation) -> None:
        for stage, seconds in obs.seconds.items():
            self._add(STAGE_SECONDS, seconds, "s", self.types.HISTOGRAM, stage=stage)
        if obs.batch_size:
            self._add(BATCH_SIZE, obs.batch_size, "count", self.types.HISTOGRAM)
        for label, n in obs.predicted.items():
            self._add(PREDICTIONS, n, "count", self.types.COUNTER, label=label)
        for reason, n in obs.rejected.items():
            self._add(REJECTED, n, "count", self.types.COUNTER, reason=reason)


class PrometheusMetrics:
    """The metrics through prometheus_client: the KServe-native runtime's /metrics, and TorchServe's
    workers in multiprocess mode (then gauges merge across workers by their multiprocess_mode)."""

    # one set of families per registry, shared by its models; weak keys: a registry that is gone
    # must not hand its families to a new one at the same address (as id() keys would)
    _families: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model: str, version: str, registry=None):
        import prometheus_client as pc

        key = pc.REGISTRY if registry is None else registry
        if key not in self._families:
            kw = {"registry": key}
            self._families[key] = {
                STAGE_SECONDS: pc.Histogram(STAGE_SECONDS, "Handler time per batch by stage (s)", BASE_LABELS + ("stage",),
                                            buckets=LATENCY_BUCKETS, **kw),
                BATCH_SIZE: pc.Histogram(BATCH_SIZE, "Images per forward pass", BASE_LABELS, buckets=BATCH_BUCKETS, **kw),
                PREDICTIONS: pc.Counter(PREDICTIONS.removesuffix("_total"), "Predictions by top-1 class", BASE_LABELS + ("label",), **kw),
                REJECTED: pc.Counter(REJECTED.removesuffix("_total"), "Rejected inputs by reason", BASE_LABELS + ("reason",), **kw),
                # a worker that reloads sets a newer value: the most recent one is the model's
                MODEL_LOAD_SECONDS: pc.Gauge(MODEL_LOAD_SECONDS, "Model load time (s)", BASE_LABELS,
                                             multiprocess_mode="mostrecent", **kw),
                MODEL_INFO: pc.Gauge(MODEL_INFO, "The served archive: network format and training run (1)",
                                     BASE_LABELS + ("format", "run_id"), multiprocess_mode="max", **kw),
                REQUEST_SECONDS: pc.Histogram(REQUEST_SECONDS, "Requests by protocol and status class, arrival to answer (s)",
                                              BASE_LABELS + ("protocol", "code"), buckets=LATENCY_BUCKETS, **kw),
                QUEUE_WAIT_SECONDS: pc.Histogram(QUEUE_WAIT_SECONDS, "A request's wait for its forward pass (s)",
                                                 BASE_LABELS, buckets=LATENCY_BUCKETS, **kw),
                QUEUE_DEPTH: pc.Gauge(QUEUE_DEPTH, "Requests waiting for a forward pass", BASE_LABELS,
                                      multiprocess_mode="livesum", **kw),
                INFLIGHT: pc.Gauge(INFLIGHT, "Requests waiting for or in a forward pass", BASE_LABELS,
                                   multiprocess_mode="livesum", **kw),
            }
        self.f = self._families[key]
        self.base = {"ModelName": model, "ModelVersion": version, "Level": "Model", "Hostname": socket.gethostname()}

    def model_loaded(self, seconds: float, spec) -> None:
        self.f[MODEL_LOAD_SECONDS].labels(**self.base).set(seconds)
        self.f[MODEL_INFO].labels(**self.base, **info_labels(spec)).set(1)

    def record(self, obs: Observation) -> None:
        for stage, seconds in obs.seconds.items():
            self.f[STAGE_SECONDS].labels(**self.base, stage=stage).observe(seconds)
        if obs.batch_size:
            self.f[BATCH_SIZE].labels(**self.base).observe(obs.batch_size)
        for label, n in obs.predicted.items():
            self.f[PREDICTIONS].labels(**self.base, label=label).inc(n)
        for reason, n in obs.rejected.items():
            self.f[REJECTED].labels(**self.base, reason=reason).inc(n)

    def request(self, protocol: str, status: int, seconds: float) -> None:
        """One request answered with HTTP `status` (gRPC: its HTTP equivalent)."""
        self.f[REQUEST_SECONDS].labels(**self.base, protocol=protocol, code=status_class(status)).observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self.f[QUEUE_WAIT_SECONDS].labels(**self.base).observe(seconds)

    def watch_queue(self, depth, inflight) -> None:
        """Gauges read at scrape time: `depth()` and `inflight()` count requests (one process only)."""
        self.f[QUEUE_DEPTH].labels(**self.base).set_function(depth)
        self.f[INFLIGHT].labels(**self.base).set_function(inflight)

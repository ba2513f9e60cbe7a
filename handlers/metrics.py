"""Handler metrics: the one definition of names, types and labels, for every runtime. TorchServe
exports them through its frontend (`model_metrics_auto_detect=true`), adding the labels
ModelName, Level and Hostname; the KServe-native runtime exports the same names with the same
labels through prometheus_client, so one dashboard serves both. Histograms use the Prometheus
clients' default buckets (5 ms .. 10 s), the only ones TorchServe 0.12 offers. Every label has a
bounded set of values: stages, rejection reasons, and the model's own class labels."""
from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

STAGE_SECONDS = "image_handler_stage_seconds"  # histogram; stage: one of STAGES
BATCH_SIZE = "image_handler_batch_size"  # histogram: images per forward pass
PREDICTIONS = "image_handler_predictions_total"  # counter; label: the top-1 class
REJECTED = "image_handler_rejected_total"  # counter; reason: InputError.reason
MODEL_LOAD_SECONDS = "image_handler_model_load_seconds"  # gauge
MODEL_INFO = "image_handler_model_info"  # gauge, always 1; format, run_id (the registry's training run or "")
STAGES = ("preprocess", "inference", "postprocess", "handle")

# Labels TorchServe's frontend adds to every handler metric; the KServe runtime sets them too.
BASE_LABELS = ("ModelName", "ModelVersion", "Level", "Hostname")


@dataclass
class Observation:
    """What one batch measured; filled by ImageClassifier.predict and the runtime's adapter."""

    seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    predicted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)


class Stopwatch:
    def __init__(self, obs: Observation | None, stage: str):
        self.obs, self.stage = obs, stage

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.obs is not None:
            self.obs.seconds[self.stage] = self.obs.seconds.get(self.stage, 0.0) + time.perf_counter() - self.start


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
    """The same metrics through prometheus_client (the KServe-native runtime's /metrics)."""

    _families: dict = {}

    def __init__(self, model: str, version: str, registry=None):
        import prometheus_client as pc

        key = id(registry)
        if key not in self._families:  # one family per process and registry, shared by models
            kw = {"registry": registry} if registry is not None else {}
            self._families[key] = {
                STAGE_SECONDS: pc.Histogram(STAGE_SECONDS, "Handler time per batch by stage (s)", BASE_LABELS + ("stage",), **kw),
                BATCH_SIZE: pc.Histogram(BATCH_SIZE, "Images per forward pass", BASE_LABELS, **kw),
                PREDICTIONS: pc.Counter(PREDICTIONS.removesuffix("_total"), "Predictions by top-1 class", BASE_LABELS + ("label",), **kw),
                REJECTED: pc.Counter(REJECTED.removesuffix("_total"), "Rejected inputs by reason", BASE_LABELS + ("reason",), **kw),
                MODEL_LOAD_SECONDS: pc.Gauge(MODEL_LOAD_SECONDS, "Model load time (s)", BASE_LABELS, **kw),
                MODEL_INFO: pc.Gauge(MODEL_INFO, "The served archive: network format and training run (1)",
                                     BASE_LABELS + ("format", "run_id"), **kw),
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

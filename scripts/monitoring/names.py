"""Metric and label names the rules and the dashboard read. Handler names come from
handlers/metrics.py and TorchServe's request counters from scripts/settings.py; the TorchServe
names below are not read anywhere else in the project, so they are defined here once (checked
against a real TorchServe 0.12 /metrics by tests/test_monitoring_live.py)."""
from __future__ import annotations

from handlers import metrics as hm
from scripts.settings import METRIC_LATENCY_US, METRIC_REQUESTS_TOTAL

# Handler metrics (both runtimes); label names as handlers/metrics.py sets them.
STAGE_SECONDS = hm.STAGE_SECONDS
BATCH_SIZE = hm.BATCH_SIZE
PREDICTIONS = hm.PREDICTIONS
REJECTED = hm.REJECTED
MODEL_LOAD_SECONDS = hm.MODEL_LOAD_SECONDS
MODEL, VERSION, LEVEL, HOSTNAME = hm.BASE_LABELS
HANDLE_STAGE = hm.STAGES[-1]  # "handle": the whole handler call for one batch
STAGE, REASON, CLASS = "stage", "reason", "label"  # keyword labels in handlers/metrics.py

# TorchServe's frontend metrics (metrics_mode=prometheus).
REQUESTS_TOTAL = METRIC_REQUESTS_TOTAL  # counter; labels model_name, model_version, hostname
LATENCY_US = METRIC_LATENCY_US  # counter (running total of microseconds)
QUEUE_LATENCY_US = "ts_queue_latency_microseconds"  # counter (running total of microseconds)
TS_MODEL, TS_VERSION = "model_name", "model_version"
HTTP_STATUS_COUNTERS = {"2xx": "Requests2XX", "4xx": "Requests4XX", "5xx": "Requests5XX"}
CPU_UTILIZATION = "CPUUtilization"  # gauge, percent (host)
MEMORY_USED = "MemoryUsed"  # gauge, MB (host)
MEMORY_UTILIZATION = "MemoryUtilization"  # gauge, percent (host)

# Labels every series gets from the scrape: Prometheus' own, plus `namespace` (Kubernetes
# service discovery; the local prometheus.yml sets it as a target label).
NAMESPACE, JOB, INSTANCE = "namespace", "job", "instance"

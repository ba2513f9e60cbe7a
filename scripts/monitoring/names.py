"""Metric and label names the rules and the dashboard read. Handler names come from
handlers/metrics.py and TorchServe's request counters from scripts/serve/settings.py; the TorchServe
names below are not read anywhere else in the project, so they are defined here once (checked
against a real TorchServe 0.12 /metrics by tests/monitoring/test_monitoring_live.py)."""
from __future__ import annotations

from handlers import metrics as hm
from scripts.serve.settings import METRIC_LATENCY_US, METRIC_REQUESTS_TOTAL

# Handler and request metrics (both runtimes); label names as handlers/metrics.py sets them.
STAGE_SECONDS = hm.STAGE_SECONDS
REQUEST_SECONDS = hm.REQUEST_SECONDS
QUEUE_WAIT_SECONDS, QUEUE_DEPTH, INFLIGHT = hm.QUEUE_WAIT_SECONDS, hm.QUEUE_DEPTH, hm.INFLIGHT
PROTOCOL, CODE = "protocol", "code"  # REQUEST_SECONDS' own labels
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
MEMORY_USED = "MemoryUsed"  # gauge, MiB (host; psutil's used / 1024²)
# GPU gauges, exported only where TorchServe finds a GPU (nvidia-smi): names and the DeviceId
# label as declared in TorchServe's ts/configs/metrics.yaml (a test reads the installed one).
GPU_UTILIZATION = "GPUUtilization"  # gauge, percent
GPU_MEMORY_UTILIZATION = "GPUMemoryUtilization"  # gauge, percent
DEVICE_ID = "DeviceId"

# The KServe-native runtime's process (prometheus_client's default collector; TorchServe has none).
PROCESS_CPU_SECONDS = "process_cpu_seconds_total"  # counter
PROCESS_RSS_BYTES = "process_resident_memory_bytes"  # gauge

# NVIDIA DCGM exporter (GPU Operator), what GPU clusters scrape; it labels a GPU with the pod
# using it, which a scrape without honorLabels renames exported_namespace / exported_pod.
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # gauge, percent
DCGM_FB_USED, DCGM_FB_FREE = "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"  # gauges, MiB
DCGM_NAMESPACE, DCGM_POD, DCGM_GPU = "exported_namespace", "exported_pod", "gpu"

# The chart's runtime names (values.yaml `models[].runtime`); its PodMonitors are per runtime.
TORCHSERVE, KSERVE_NATIVE = "torchserve", "kserve-native"
RUNTIMES = (TORCHSERVE, KSERVE_NATIVE)

# Labels every series gets from the scrape: Prometheus' own, plus `namespace` (Kubernetes
# service discovery; the local prometheus.yml sets it as a target label).
NAMESPACE, JOB, INSTANCE = "namespace", "job", "instance"

# How the rules aggregate: by namespace and job (one Prometheus can watch several releases) and the
# model's name and version.
BY_MODEL = (NAMESPACE, JOB, MODEL, VERSION)  # handler and request metrics
BY_TS_MODEL = (NAMESPACE, JOB, TS_MODEL, TS_VERSION)  # TorchServe frontend metrics
BY_TARGET = (NAMESPACE, JOB, INSTANCE)


def by(labels) -> str:
    return ", ".join(labels)

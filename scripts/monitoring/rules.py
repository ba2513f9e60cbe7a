"""Recording rules and alerts, defined once. `rule_groups()` is the `groups:` list of a plain
Prometheus rules file and, unchanged, the `spec.groups` of a prometheus-operator PrometheusRule
(`prometheus_rule()`), which adds the SLO parameters of its models (slo.py);
`python -m scripts.monitoring.generate` writes the plain file to the chart.
Names follow Prometheus' level:metric:operations convention. Series are aggregated by namespace
and job (so one Prometheus can watch several releases) and the model's name and version."""
from __future__ import annotations

from dataclasses import dataclass

from scripts.monitoring import names as n
from scripts.monitoring import slo

WINDOW = "2m"  # rate window of the recording rules: >= 4 scrapes at the chart's 30 s interval
BY_MODEL, BY_TS_MODEL, BY_TARGET = n.BY_MODEL, n.BY_TS_MODEL, n.BY_TARGET
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

# Recording rule names (the dashboard and the tests read these).
REQUEST_RATE = f"model:{n.REQUESTS_TOTAL}:rate{WINDOW}"
IMAGE_RATE = f"model:image_handler_images:rate{WINDOW}"
REJECTED_RATE = f"model_reason:{n.REJECTED}:rate{WINDOW}"
REJECTED_RATIO = f"model:{n.REJECTED}:ratio_rate{WINDOW}"
HTTP_RATE = f"target_status:ts_http_requests:rate{WINDOW}"
HTTP_ERROR_RATIO = f"target:ts_http_errors:ratio_rate{WINDOW}"
HANDLE_QUANTILE = {k: f"model:image_handler_handle_seconds:{k}_rate{WINDOW}" for k in QUANTILES}
# per request, from arrival to answer, every protocol and status (both runtimes)
SERVED_RATE = f"model:image_classifier_requests:rate{WINDOW}"
REQUEST_QUANTILE = {k: f"model:{n.REQUEST_SECONDS}:{k}_rate{WINDOW}" for k in QUANTILES}
# requests in progress, on average over the window: the time spent in requests per second
# (Little's law), so it needs no gauge and means the same on both runtimes
IN_FLIGHT = f"model:image_classifier_requests_in_flight:rate{WINDOW}"
# what the chart's KEDA option scales on (autoscaling.keda.signal → the recorded series)
SCALING_SIGNALS = {"concurrency": IN_FLIGHT, "rps": SERVED_RATE}
STAGE_P95 = f"model_stage:{n.STAGE_SECONDS}:p95_rate{WINDOW}"


@dataclass(frozen=True)
class Thresholds:
    p99_seconds: float = 0.5  # handler p99 per batch
    rejected_ratio: float = 0.05  # share of images the handler rejects
    http_error_ratio: float = 0.05  # share of TorchServe HTTP calls answered 4xx/5xx
    no_traffic_window: str = "10m"
    for_latency: str = "5m"
    for_errors: str = "5m"
    for_down: str = "2m"
    down_memory: str = "1h"  # a down target counts as ours if it exported a model this recently
    restart_window: str = "15m"


def recording_rules() -> list[dict]:
    w = WINDOW
    images = "|".join((n.PREDICTIONS, n.REJECTED))
    handle = f'{n.STAGE_SECONDS}_bucket{{{n.STAGE}="{n.HANDLE_STAGE}"}}'
    rules = [
        {"record": REQUEST_RATE, "expr": f"sum by ({n.by(BY_TS_MODEL)}) (rate({n.REQUESTS_TOTAL}[{w}]))"},
        # images the handler saw (predicted or rejected): the same on TorchServe and the KServe runtime
        {"record": IMAGE_RATE, "expr": f'sum by ({n.by(BY_MODEL)}) (rate({{__name__=~"{images}"}}[{w}]))'},
        {"record": REJECTED_RATE, "expr": f"sum by ({n.by(BY_MODEL + (n.REASON,))}) (rate({n.REJECTED}[{w}]))"},
        {"record": REJECTED_RATIO, "expr": f"sum by ({n.by(BY_MODEL)}) ({REJECTED_RATE}) / {IMAGE_RATE}"},
    ]
    for status, metric in n.HTTP_STATUS_COUNTERS.items():  # the status is in the metric name
        rules.append({"record": HTTP_RATE, "expr": f"sum by ({n.by(BY_TARGET)}) (rate({metric}[{w}]))",
                      "labels": {"status": status}})
    rules.append({"record": HTTP_ERROR_RATIO,
                  "expr": f'sum by ({n.by(BY_TARGET)}) ({HTTP_RATE}{{status=~"4xx|5xx"}}) '
                          f"/ sum by ({n.by(BY_TARGET)}) ({HTTP_RATE})"})
    for key, q in QUANTILES.items():
        rules.append({"record": HANDLE_QUANTILE[key],
                      "expr": f"histogram_quantile({q}, sum by ({n.by(BY_MODEL + ('le',))}) (rate({handle}[{w}])))"})
    requests = f"{n.REQUEST_SECONDS}"
    rules.append({"record": SERVED_RATE, "expr": f"sum by ({n.by(BY_MODEL)}) (rate({requests}_count[{w}]))"})
    rules.append({"record": IN_FLIGHT, "expr": f"sum by ({n.by(BY_MODEL)}) (rate({requests}_sum[{w}]))"})
    for key, q in QUANTILES.items():
        rules.append({"record": REQUEST_QUANTILE[key],
                      "expr": f"histogram_quantile({q}, sum by ({n.by(BY_MODEL + ('le',))}) (rate({requests}_bucket[{w}])))"})
    rules.append({"record": STAGE_P95,
                  "expr": f"histogram_quantile(0.95, sum by ({n.by(BY_MODEL + (n.STAGE, 'le'))}) "
                          f"(rate({n.STAGE_SECONDS}_bucket[{w}])))"})
    return rules


def alert_rules(t: Thresholds = Thresholds()) -> list[dict]:
    model = f"{{{{ $labels.{n.MODEL} }}}} {{{{ $labels.{n.VERSION} }}}}"
    return [
        {"alert": "ImageClassifierHighLatency",
         "expr": f"{HANDLE_QUANTILE['p99']} > {t.p99_seconds}", "for": t.for_latency,
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"{model}: handler p99 above {t.p99_seconds} s"}},
        {"alert": "ImageClassifierInputsRejected",
         "expr": f"{REJECTED_RATIO} > {t.rejected_ratio}", "for": t.for_errors,
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"{model}: more than {t.rejected_ratio:.0%} of images rejected"}},
        {"alert": "TorchServeHighErrorRatio",
         "expr": f"{HTTP_ERROR_RATIO} > {t.http_error_ratio}", "for": t.for_errors,
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"{{{{ $labels.{n.INSTANCE} }}}}: more than {t.http_error_ratio:.0%} of HTTP calls answered 4xx/5xx"}},
        {"alert": "ImageClassifierNoTraffic",
         "expr": f"max by ({n.by(BY_MODEL)}) ({n.MODEL_LOAD_SECONDS}) unless on ({n.by(BY_MODEL)}) "
                 f"(sum by ({n.by(BY_MODEL)}) (rate({n.STAGE_SECONDS}_count{{{n.STAGE}=\"{n.HANDLE_STAGE}\"}}[{t.no_traffic_window}])) > 0)",
         "for": t.no_traffic_window, "labels": {"severity": "info"},
         "annotations": {"summary": f"{model} is loaded but received no requests for {t.no_traffic_window}"}},
        # scoped to targets that exported a model in the last hour: a shared Prometheus has others
        {"alert": "ImageClassifierTargetDown",
         "expr": f"up == 0 and on ({n.by(BY_TARGET)}) max by ({n.by(BY_TARGET)}) "
                 f"(max_over_time({n.MODEL_LOAD_SECONDS}[{t.down_memory}]))",
         "for": t.for_down, "labels": {"severity": "critical"},
         "annotations": {"summary": f"{{{{ $labels.{n.INSTANCE} }}}} ({{{{ $labels.{n.JOB} }}}}) cannot be scraped"}},
        {"alert": "ImageClassifierNoModelLoaded",
         # TorchServe's frontend always exports its host gauges; the handler's gauge needs a loaded model
         "expr": f"max by ({n.by(BY_TARGET)}) ({n.CPU_UTILIZATION}) unless on ({n.by(BY_TARGET)}) "
                 f"count by ({n.by(BY_TARGET)}) ({n.MODEL_LOAD_SECONDS})",
         "for": t.for_down, "labels": {"severity": "critical"},
         "annotations": {"summary": f"TorchServe {{{{ $labels.{n.INSTANCE} }}}} is up but no model has loaded"}},
        # TorchServe exports no restart counter; every (re)load of a worker sets the handler's
        # model-load gauge to a new value, so changes() counts reloads after the first.
        {"alert": "ImageClassifierWorkerRestarted",
         "expr": f"changes({n.MODEL_LOAD_SECONDS}[{t.restart_window}]) > 0", "labels": {"severity": "warning"},
         "annotations": {"summary": f"{model}: a worker reloaded the model in the last {t.restart_window}"}},
    ]


def every_alert(t: Thresholds = Thresholds()) -> list[dict]:
    """The alerts of every group, the SLO burn-rate alerts included."""
    return [rule for group in rule_groups(t) for rule in group["rules"] if "alert" in rule]


def scaling_query(signal: str, namespace: str, model: str) -> str:
    """The Prometheus query the chart's KEDA option gives KServe for one model (KEDA's
    Prometheus trigger divides its value by the replicas)."""
    return f'sum({SCALING_SIGNALS[signal]}{{{n.NAMESPACE}="{namespace}", {n.MODEL}="{model}"}})'


def rule_groups(t: Thresholds = Thresholds()) -> list[dict]:
    """Every group but the SLO parameters (the chart renders those from its values)."""
    return [{"name": "image-classifier.rules", "rules": recording_rules()},
            {"name": "image-classifier.alerts", "rules": alert_rules(t)},
            slo.group()]


def rules_file(t: Thresholds = Thresholds(), namespace: str | None = None, models=(),
               objectives: slo.Objectives = slo.Objectives()) -> dict:
    """A plain Prometheus rules file (`rule_files:`), with the SLO parameters of `models` in
    `namespace` where given."""
    params = [slo.parameter_group(namespace, models, objectives)] if models else []
    return {"groups": rule_groups(t) + params}


def prometheus_rule(name: str, namespace: str | None = None, t: Thresholds = Thresholds(), models=(),
                    objectives: slo.Objectives = slo.Objectives()) -> dict:
    """The same groups as a prometheus-operator PrometheusRule (what the chart renders)."""
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta,
            "spec": {"groups": rules_file(t, namespace, models, objectives)["groups"]}}

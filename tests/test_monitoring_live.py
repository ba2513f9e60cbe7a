"""A real Prometheus (Debian 2.42) scraping the `torchserve` fixture every second with our rules
loaded, after a bounded load with a few bad requests: every panel query of the dashboard is
valid PromQL and returns data, the recording rules produce series, the latency quantiles agree
with what the client measured, and the bad requests show up in the error series."""
from __future__ import annotations

import bisect
import shutil
import time

import pytest
import requests

from handlers import metrics as hm
from scripts.monitoring import dashboard, load, names, rules
from scripts.monitoring.monitor import free_port
from scripts.monitoring.prometheus import JOB, Prometheus, PrometheusError, write_config
from tests.conftest import MODEL_NAME, metric_value

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, float("inf"))


def bucket_upper(seconds: float) -> float:
    """Upper edge of the default histogram bucket holding `seconds` (histogram_quantile
    interpolates inside the bucket that holds the true quantile)."""
    return BUCKETS[bisect.bisect_left(BUCKETS, seconds)]


rejected_before = [0.0]  # image_handler_rejected_total just before the load


@pytest.fixture(scope="module")
def monitored(torchserve, samples, tmp_path_factory):
    out_dir, listed = samples
    run = tmp_path_factory.mktemp("prometheus")
    settings = torchserve.settings
    config = write_config(run, [f"{settings.host}:{settings.metrics_port}"], interval="1s")
    prom = Prometheus(run, config, free_port()).start(timeout=60)
    try:
        assert prom.wait_for(f'up{{job="{JOB}"}} == 1', timeout=20)
        images = [(out_dir / s["file"]).read_bytes() for s in listed]
        # the session's TorchServe has served other tests' bad requests: count from here on
        rejected_before[0] = metric_value(requests.get(settings.metrics_url, timeout=10).text,
                                          names.REJECTED, **{names.MODEL: MODEL_NAME})
        result = load.run_load(settings.inference_url, MODEL_NAME, images, count=240, seconds=12, bad_every=12)
        assert result.latencies, result.summary()
        # the last scrapes and rule evaluations after the load
        prom.wait_for(f'{rules.REJECTED_RATE}{{{names.REASON}="invalid_image"}} > 0', timeout=15)
        time.sleep(2.5)
        yield prom, result
    finally:
        prom.stop()


def test_load_was_bounded_and_had_bad_requests(monitored):
    _, result = monitored
    assert sum(result.statuses.values()) <= 240 and result.seconds < 40
    assert result.statuses.get(400, 0) >= 5 and result.statuses.get(404, 0) >= 5, result.summary()
    assert result.statuses.get(200, 0) >= 100, result.summary()


def test_bad_promql_is_refused(monitored):
    prom, _ = monitored
    assert prom.api("query", query="sum by (").status_code == 400
    with pytest.raises(PrometheusError):
        prom.query("rate(up)")


def test_every_panel_query_is_valid_and_returns_data(monitored):
    prom, _ = monitored
    empty = []
    for panel in dashboard.PANELS:
        for q in panel.queries:
            expr = dashboard.prometheus_query(q.expr)
            if not prom.query(expr):  # raises on bad PromQL (HTTP 400)
                empty.append((panel.title, expr))
    assert not empty, empty


def test_dashboard_variables_resolve(monitored):
    prom, _ = monitored
    assert prom.api("label/namespace/values").json()["data"] == ["local"]
    models = {s["metric"][names.MODEL] for s in prom.query(names.MODEL_LOAD_SECONDS)}
    assert MODEL_NAME in models and "imagenet" in models


def test_recording_rules_produce_series(monitored):
    prom, _ = monitored
    missing = []
    for rule in rules.recording_rules():
        status = rule.get("labels", {}).get("status")
        if not prom.query(rule["record"] + (f'{{status="{status}"}}' if status else "")):
            missing.append((rule["record"], status))
    # Requests5XX has no samples until TorchServe answers a 5xx: its recorded rate cannot exist
    assert missing in ([], [(rules.HTTP_RATE, "5xx")]), missing


def test_latency_quantiles_agree_with_the_client(monitored):
    prom, result = monitored
    sel = f'{{{names.MODEL}="{MODEL_NAME}"}}'
    q = {k: float(prom.query(rule + sel)[0]["value"][1]) for k, rule in rules.HANDLE_QUANTILE.items()}
    lo, med, hi = min(result.latencies), result.quantile(0.5), max(result.latencies)
    print(f"prometheus handle quantiles {q}; client min/median/max {lo:.4f}/{med:.4f}/{hi:.4f} s")
    assert 0 < q["p50"] <= q["p95"] <= q["p99"]
    # one batch through the handler happens inside each of its requests' round trips
    assert q["p50"] <= bucket_upper(med)
    assert q["p99"] <= bucket_upper(hi)
    # Units are seconds: the exact mean handler time (sum/count, not a bucket estimate) lies
    # between 0.1 ms and the slowest round trip the client saw. (The handler's time excludes HTTP
    # and queueing, so the client's fastest call is no lower bound for it.)
    handle = f'{{{names.MODEL}="{MODEL_NAME}",{names.STAGE}="{names.HANDLE_STAGE}"}}'
    mean = float(prom.query(f"sum(increase({names.STAGE_SECONDS}_sum{handle}[5m])) / "
                            f"sum(increase({names.STAGE_SECONDS}_count{handle}[5m]))")[0]["value"][1])
    assert 1e-4 < mean < hi


def test_bad_requests_show_up_in_the_error_series(monitored):
    prom, result = monitored
    sel = f'{names.MODEL}="{MODEL_NAME}"'
    rejected = prom.query(f'{rules.REJECTED_RATE}{{{sel}, {names.REASON}="invalid_image"}}')
    assert rejected and float(rejected[0]["value"][1]) > 0
    ratio = float(prom.query(f"{rules.REJECTED_RATIO}{{{sel}}}")[0]["value"][1])
    assert 0 < ratio < 0.5
    errors = prom.query(f'{rules.HTTP_RATE}{{status="4xx"}}')
    assert errors and float(errors[0]["value"][1]) > 0
    assert 0 < float(prom.query(rules.HTTP_ERROR_RATIO)[0]["value"][1]) < 0.5
    # the raw counter grew by exactly what the client got refused
    raw = sum(float(s["value"][1]) for s in prom.query(f'{names.REJECTED}{{{sel}}}'))
    assert raw - rejected_before[0] == result.statuses[400]


def test_torchserve_exports_the_names_the_rules_read(monitored, torchserve):
    text = requests.get(torchserve.settings.metrics_url, timeout=10).text
    for name in (names.REQUESTS_TOTAL, names.LATENCY_US, names.QUEUE_LATENCY_US, names.CPU_UTILIZATION,
                 names.MEMORY_UTILIZATION, *names.HTTP_STATUS_COUNTERS.values(), hm.STAGE_SECONDS, hm.BATCH_SIZE,
                 hm.PREDICTIONS, hm.REJECTED, hm.MODEL_LOAD_SECONDS):
        assert f"# TYPE {name} " in text, name


def test_no_target_or_model_alerts(monitored):
    prom, _ = monitored
    alerts = {a["labels"]["alertname"] for a in prom.api("alerts").json()["data"]["alerts"]}
    assert not alerts & {"ImageClassifierTargetDown", "ImageClassifierNoModelLoaded", "ImageClassifierWorkerRestarted"}

"""A real Prometheus (Debian 2.42) scraping, every second and with our rules loaded, the
`torchserve` fixture and a real KServe-native runtime over the same store, each as the job the
chart's PodMonitor would give it, after a bounded load on each with a few bad requests: every
panel query of the dashboard is valid PromQL and returns data (the GPU panel: valid, no GPU
here), the panels meant for both runtimes return data for each runtime's job, the recording
rules produce series, the latency quantiles agree with what the client measured, the bad
requests show up in the error series, and a SIGKILLed TorchServe worker fires the
worker-restart alert."""
from __future__ import annotations

import bisect
import os
import shutil
import signal
import time
from dataclasses import dataclass

import pytest
import requests

from handlers import metrics as hm
from scripts.monitoring import dashboard, load, names, rules
from scripts.monitoring.dashboard import KSERVE_NATIVE, RUNTIMES, TORCHSERVE
from scripts.monitoring.monitor import free_port
from scripts.monitoring.prometheus import Prometheus, PrometheusError, job_name, write_config
from scripts.serve import policy
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from tests.helpers import IMAGENET_NAME, MODEL_NAME, metric_value

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")]

BUCKETS = hm.LATENCY_BUCKETS + (float("inf"),)
JOBS = {rt: job_name(rt) for rt in RUNTIMES}
# The one exception to "every panel returns data": this machine has no GPU, so neither
# TorchServe's GPU gauges nor a DCGM exporter exist here. Its queries are checked to be valid
# PromQL against the live Prometheus instead (test_gpu_panel_queries_are_valid_promql).
GPU_PANEL = "GPU utilization and memory"
HAS_GPU = shutil.which("nvidia-smi") is not None


def bucket_upper(seconds: float) -> float:
    """Upper edge of the latency bucket holding `seconds` (histogram_quantile
    interpolates inside the bucket that holds the true quantile)."""
    return BUCKETS[bisect.bisect_left(BUCKETS, seconds)]


@dataclass
class Monitored:
    prom: "PinnedPrometheus"  # queries evaluated right after the load (see the fixture)
    results: dict[str, load.LoadResult]  # runtime → its load
    rejected_before: dict[str, float]  # runtime → image_handler_rejected_total just before its load
    metrics_urls: dict[str, str]
    warmup_max: dict[str, float]  # runtime → its slowest warm-up round trip (seconds)


@pytest.fixture(scope="module")
def kserve_runtime(store, tmp_path_factory):
    rt = KServeRuntime(store / "model-store", tmp_path_factory.mktemp("kserve-monitored"), *free_ports(2)).start()
    yield rt
    rt.stop()


class PinnedPrometheus:
    """A Prometheus whose instant queries are evaluated at one moment: right after the load. The
    tests after it may run for minutes on a busy machine, longer than the rules' rate window."""

    def __init__(self, prom: Prometheus, at: float):
        self.live, self.at = prom, at

    def query(self, expr: str) -> list[dict]:
        return self.live.query(expr, at=self.at)

    def __getattr__(self, name):
        return getattr(self.live, name)


@pytest.fixture(scope="module")
def monitored(torchserve, kserve_runtime, samples, tmp_path_factory):
    out_dir, listed = samples
    run = tmp_path_factory.mktemp("prometheus")
    settings = torchserve.settings
    metrics_urls = {TORCHSERVE: settings.metrics_url, KSERVE_NATIVE: kserve_runtime.metrics_url}
    config = write_config(run, {TORCHSERVE: [f"{settings.host}:{settings.metrics_port}"],
                                KSERVE_NATIVE: [f"127.0.0.1:{kserve_runtime.metrics_port}"]}, interval="1s",
                          models=(MODEL_NAME, IMAGENET_NAME))
    prom = Prometheus(run, config, free_port()).start(timeout=60)
    try:
        for job in JOBS.values():
            assert prom.wait_for(f'up{{job="{job}"}} == 1', timeout=20), job
        images = [(out_dir / s["file"]).read_bytes() for s in listed]
        # One good and one bad request first, and wait until Prometheus has scraped the series they
        # create: rate() counts only what a series gains after its first scrape, and a fast runtime
        # can finish the whole load before that.
        urls = {TORCHSERVE: f"{settings.inference_url}/predictions/{MODEL_NAME}",
                KSERVE_NATIVE: kserve_runtime.url + load.KSERVE_V1_PATH.format(model=MODEL_NAME)}
        warmup_max = {}
        for rt, url in urls.items():
            for body in (images[0], b"junk"):
                started = time.perf_counter()
                requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=30)
                warmup_max[rt] = max(warmup_max.get(rt, 0.0), time.perf_counter() - started)
        for job in JOBS.values():
            for series in (f'{names.REJECTED}{{job="{job}"}}', f'{names.STAGE_SECONDS}_count{{job="{job}"}}'):
                assert prom.wait_for(series, timeout=20), series
        # the session's TorchServe has served other tests' bad requests: count from here on
        rejected_before = {rt: metric_value(requests.get(url, timeout=10).text, names.REJECTED, **{names.MODEL: MODEL_NAME})
                           for rt, url in metrics_urls.items()}
        results = {
            TORCHSERVE: load.run_load(settings.inference_url, MODEL_NAME, images, count=240, seconds=12, bad_every=12),
            KSERVE_NATIVE: load.run_load(kserve_runtime.url, MODEL_NAME, images, count=120, seconds=8, bad_every=12,
                                         path=load.KSERVE_V1_PATH),
        }
        for result in results.values():
            assert result.latencies, result.summary()
        # Pin the queries once Prometheus holds the whole load (no fixed sleep): a scrape of each
        # job shows the counters its runtime reports now, and the rules were evaluated after it.
        pinned = wait_until_scraped_and_evaluated(prom, metrics_urls, timeout=30)
        yield Monitored(PinnedPrometheus(prom, pinned), results, rejected_before, metrics_urls, warmup_max)
    finally:
        prom.stop()


def values(prom: Prometheus, expr: str) -> list[float]:
    return [float(s["value"][1]) for s in prom.query(expr)]


def wait_until_scraped_and_evaluated(prom: Prometheus, metrics_urls: dict[str, str], timeout: float) -> float:
    """A time at which Prometheus has scraped the end of the load from every runtime and evaluated
    every rule on it. The load is over: each runtime's own rejected/stage counters no longer move,
    so Prometheus holds the end once its latest samples equal them; a recorded series stamped
    after that moment was computed from them. Polls until `timeout`, then fails naming what lags."""
    deadline = time.monotonic() + timeout
    counters = (names.REJECTED, f"{names.STAGE_SECONDS}_count")
    final = {(rt, c): metric_value(requests.get(url, timeout=10).text, c, **{names.MODEL: MODEL_NAME})
             for rt, url in metrics_urls.items() for c in counters}

    def lagging() -> dict:
        got = {(rt, c): sum(values(prom, f'{c}{{{names.MODEL}="{MODEL_NAME}", job="{JOBS[rt]}"}}'))
               for rt, c in final}
        return {k: (got[k], final[k]) for k in final if got[k] != final[k]}

    while lag := lagging():
        assert time.monotonic() < deadline, f"Prometheus never scraped the end of the load: (has, runtime) {lag}"
        time.sleep(0.25)
    scraped = time.time()
    recorded = sorted({r["record"] for r in rules.recording_rules()})
    while True:  # a recorded series' sample time is its rule's last evaluation
        oldest = [t for name in recorded for t in values(prom, f"min(timestamp({name}))")]
        if oldest and min(oldest) > scraped:
            return time.time()
        assert time.monotonic() < deadline, f"no rule evaluated after the last scrape ({scraped}): {oldest}"
        time.sleep(0.25)


@pytest.mark.parametrize("runtime, count", [(TORCHSERVE, 240), (KSERVE_NATIVE, 120)])
def test_load_was_bounded_and_had_bad_requests(monitored, runtime, count):
    result = monitored.results[runtime]
    assert sum(result.statuses.values()) <= count and result.seconds < 40
    assert result.statuses.get(400, 0) >= 3 and result.statuses.get(404, 0) >= 3, result.summary()
    assert result.statuses.get(200, 0) >= count // 3, result.summary()


def test_bad_promql_is_refused(monitored):
    prom = monitored.prom
    assert prom.api("query", query="sum by (").status_code == 400
    with pytest.raises(PrometheusError):
        prom.query("rate(up)")


def test_every_panel_query_is_valid_and_returns_data(monitored):
    titles = [p.title for p in dashboard.PANELS]
    assert GPU_PANEL in titles  # the exception below names a panel that exists
    empty = []
    for panel in dashboard.PANELS:
        if panel.title == GPU_PANEL and not HAS_GPU:
            continue  # no GPU here: test_gpu_panel_queries_are_valid_promql
        for q in panel.queries:
            expr = dashboard.prometheus_query(q.expr)
            if not monitored.prom.query(expr):  # raises on bad PromQL (HTTP 400)
                empty.append((panel.title, expr))
    assert not empty, empty


def test_gpu_panel_queries_are_valid_promql(monitored):
    """Without a GPU the GPU panel has nothing to show; its queries must still be accepted by a
    real Prometheus (200, status success), so the panel works where the series exist."""
    panel = next(p for p in dashboard.PANELS if p.title == GPU_PANEL)
    for q in panel.queries:
        expr = dashboard.prometheus_query(q.expr)
        resp = monitored.prom.api("query", query=expr)
        assert resp.status_code == 200 and resp.json()["status"] == "success", (expr, resp.text)
        if not HAS_GPU:
            assert resp.json()["data"]["result"] == [], expr
        elif names.GPU_UTILIZATION in expr:  # TorchServe exports its GPU gauges when it finds one
            assert resp.json()["data"]["result"], expr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_gets_the_panels_meant_for_it(monitored, runtime):
    """The panels for both runtimes show data for each runtime's job alone (the $job variable);
    a panel that says it covers one runtime has nothing for the other (or its description lies)."""
    missing, unexpected = [], []
    for panel in dashboard.PANELS:
        if panel.title == GPU_PANEL:
            continue  # no GPU here (see above)
        got = [s for q in panel.queries for s in monitored.prom.query(dashboard.prometheus_query(q.expr, job=JOBS[runtime]))]
        if runtime in panel.runtimes and not got:
            missing.append(panel.title)
        if runtime not in panel.runtimes and got:
            unexpected.append(panel.title)
    assert not missing and not unexpected, (missing, unexpected)
    assert [p.title for p in dashboard.PANELS if runtime not in p.runtimes] == []  # one dashboard for both


def test_dashboard_variables_resolve(monitored):
    prom = monitored.prom
    assert prom.api("label/namespace/values").json()["data"] == ["local"]
    jobs = prom.api("label/job/values", **{"match[]": names.MODEL_LOAD_SECONDS}).json()["data"]
    assert sorted(jobs) == sorted(JOBS.values())
    for job in JOBS.values():
        models = {s["metric"][names.MODEL] for s in prom.query(f'{names.MODEL_LOAD_SECONDS}{{job="{job}"}}')}
        assert models == {MODEL_NAME, IMAGENET_NAME}, job


def test_recording_rules_produce_series(monitored):
    prom = monitored.prom
    missing = []
    for rule in rules.recording_rules():
        status = rule.get("labels", {}).get("status")
        if not prom.query(rule["record"] + (f'{{status="{status}"}}' if status else "")):
            missing.append((rule["record"], status))
    # Requests5XX has no samples until TorchServe answers a 5xx: its recorded rate cannot exist
    assert missing in ([], [(rules.HTTP_RATE, "5xx")]), missing


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_latency_quantiles_agree_with_the_client(monitored, runtime):
    prom, result = monitored.prom, monitored.results[runtime]
    sel = f'{{{names.MODEL}="{MODEL_NAME}", job="{JOBS[runtime]}"}}'
    q = {k: values(prom, rule + sel) for k, rule in rules.HANDLE_QUANTILE.items()}
    assert all(len(v) == 1 for v in q.values()), q
    q = {k: v[0] for k, v in q.items()}
    # the rules' 2-minute window also holds the warm-up requests (a runtime's first request can be
    # its slowest): the slowest round trip the window can contain is the bound
    lo, med, hi = min(result.latencies), result.quantile(0.5), max(*result.latencies, monitored.warmup_max[runtime])
    print(f"{runtime}: prometheus handle quantiles {q}; client min/median/max {lo:.4f}/{med:.4f}/{hi:.4f} s")
    assert 0 < q["p50"] <= q["p95"] <= q["p99"]
    # one batch through the handler happens inside each of its requests' round trips
    assert q["p50"] <= bucket_upper(med)
    assert q["p99"] <= bucket_upper(hi)
    # Units are seconds: the exact mean handler time (sum/count, not a bucket estimate) lies
    # between 0.1 ms and the slowest round trip the client saw. (The handler's time excludes HTTP
    # and queueing, so the client's fastest call is no lower bound for it.)
    handle = f'{{{names.MODEL}="{MODEL_NAME}",{names.STAGE}="{names.HANDLE_STAGE}",job="{JOBS[runtime]}"}}'
    mean = values(prom, f"sum(increase({names.STAGE_SECONDS}_sum{handle}[5m])) / "
                        f"sum(increase({names.STAGE_SECONDS}_count{handle}[5m]))")[0]
    assert 1e-4 < mean < hi


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_request_latency_resolves_below_the_clients_median(monitored, runtime):
    """The request histogram's p50 of the good requests, off the bucket edges (resolved, not
    guessed inside one coarse bucket), lies at most one bucket above the median round trip the
    load generator measured: each round trip holds the server's time and adds the HTTP client's,
    which four client threads on two shared cores make large (`make monitor`'s sequential client
    checks the closeness: tests/monitoring/test_monitoring.py)."""
    prom, result = monitored.prom, monitored.results[runtime]
    sel = f'{names.MODEL}="{MODEL_NAME}", job="{JOBS[runtime]}", {names.CODE}="2xx"'
    p50 = values(prom, f"histogram_quantile(0.5, sum by (le) (rate({names.REQUEST_SECONDS}_bucket{{{sel}}}[{rules.WINDOW}])))")
    assert len(p50) == 1, p50
    median = result.quantile(0.5)
    print(f"{runtime}: request p50 from the buckets {p50[0] * 1e3:.2f} ms, load generator's median {median * 1e3:.2f} ms")
    assert 0 < p50[0] <= bucket_upper(median)
    assert p50[0] not in BUCKETS


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bad_requests_show_up_in_the_error_series(monitored, runtime):
    prom, result = monitored.prom, monitored.results[runtime]
    sel = f'{names.MODEL}="{MODEL_NAME}", job="{JOBS[runtime]}"'
    rejected = values(prom, f'{rules.REJECTED_RATE}{{{sel}, {names.REASON}="invalid_image"}}')
    assert rejected and rejected[0] > 0
    ratio = values(prom, f"{rules.REJECTED_RATIO}{{{sel}}}")[0]
    assert 0 < ratio < 0.5
    # the raw counter grew by exactly what the client got refused
    raw = sum(values(prom, f'{names.REJECTED}{{{sel}}}'))
    assert raw - monitored.rejected_before[runtime] == result.statuses[400]


def test_torchserve_http_errors_show_up(monitored):
    prom, ts_job = monitored.prom, JOBS[TORCHSERVE]
    errors = values(prom, f'{rules.HTTP_RATE}{{status="4xx", job="{ts_job}"}}')
    assert errors and errors[0] > 0
    assert 0 < values(prom, f'{rules.HTTP_ERROR_RATIO}{{job="{ts_job}"}}')[0] < 0.5


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtimes_export_the_names_the_rules_read(monitored, runtime):
    text = requests.get(monitored.metrics_urls[runtime], timeout=10).text
    handler = (hm.STAGE_SECONDS, hm.BATCH_SIZE, hm.PREDICTIONS, hm.REJECTED, hm.MODEL_LOAD_SECONDS)
    own = {TORCHSERVE: (names.REQUESTS_TOTAL, names.LATENCY_US, names.QUEUE_LATENCY_US, names.CPU_UTILIZATION,
                        names.MEMORY_USED, *names.HTTP_STATUS_COUNTERS.values()),
           KSERVE_NATIVE: (names.PROCESS_CPU_SECONDS, names.PROCESS_RSS_BYTES)}[runtime]
    for name in (*handler, *own):
        assert f"# TYPE {name} " in text, name


def test_no_target_or_model_alerts(monitored):
    alerts = {a["labels"]["alertname"] for a in monitored.prom.api("alerts").json()["data"]["alerts"]}
    assert not alerts & {"ImageClassifierTargetDown", "ImageClassifierNoModelLoaded", "ImageClassifierWorkerRestarted"}


def workers(torchserve, model: str) -> list[dict]:
    described = requests.get(f"{torchserve.settings.management_url}/models/{model}", timeout=5).json()
    found = described[0]["workers"]
    # as many as the archive's model_snapshot says (the light policy: two)
    assert len(found) == policy.LIGHT.torchserve_worker_count, found
    return found


def test_a_killed_worker_fires_the_restart_alert(monitored, torchserve):
    """Last in this module: it restarts a worker. TorchServe has no restart counter; the new
    worker loads the model again and the handler's load-time gauge takes a new value, which is
    what the alert's changes() sees."""
    prom = monitored.prom.live  # this test makes its own events: query now
    alert = next(a for a in rules.alert_rules() if a["alert"] == "ImageClassifierWorkerRestarted")

    def restarted() -> set[tuple[str, str]]:
        return {(s["metric"][names.MODEL], s["metric"]["job"]) for s in prom.query(alert["expr"])}

    assert restarted() == set()
    before = workers(torchserve, MODEL_NAME)[0]
    assert before["status"] == "READY"
    os.kill(int(before["pid"]), signal.SIGKILL)
    try:
        deadline = time.monotonic() + 60
        while not restarted() and time.monotonic() < deadline:
            time.sleep(0.5)
        # only the killed worker's model, on TorchServe's job
        assert restarted() == {(MODEL_NAME, JOBS[TORCHSERVE])}
        while time.monotonic() < deadline:  # no `for:`: it fires at the next rule evaluation
            firing = [a["labels"] for a in prom.api("alerts").json()["data"]["alerts"]
                      if a["labels"]["alertname"] == alert["alert"] and a["state"] == "firing"]
            if firing:
                break
            time.sleep(0.5)
        assert [(f[names.MODEL], f["job"]) for f in firing] == [(MODEL_NAME, JOBS[TORCHSERVE])]
    finally:  # later tests share this TorchServe: wait for the new worker
        deadline = time.monotonic() + 120
        while not torchserve.ready() and time.monotonic() < deadline:
            time.sleep(0.5)
    after = workers(torchserve, MODEL_NAME)
    assert all(w["status"] == "READY" for w in after) and before["pid"] not in [w["pid"] for w in after]

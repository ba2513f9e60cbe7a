"""The latency buckets resolve what they measure: known latency distributions (a fast model's
sub-millisecond one and a slow one's) are observed through the handler's own metrics class,
scraped by a real Prometheus, and the p50/p95/p99 that histogram_quantile reads from the
buckets land within one bucket of the samples' true quantiles. The same fast samples in the
Prometheus clients' default buckets (what TorchServe's frontend gives every histogram) miss by
more: the check can fail."""
from __future__ import annotations

import bisect
import shutil

import numpy as np
import prometheus_client
import pytest

from handlers import metrics as hm
from scripts.monitoring import names
from scripts.monitoring.monitor import free_port
from scripts.monitoring.prometheus import Prometheus, write_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")]

SAMPLES = 20_000
# model name → (median seconds, sigma of the log): a 0.6 ms handler and a 80 ms one
DISTRIBUTIONS = {"fast": (0.0006, 0.5), "slow": (0.08, 0.9)}
DEFAULT_BUCKETS_NAME = "test_default_buckets_seconds"  # the control: prometheus_client's defaults


def bucket(seconds: float, edges=hm.LATENCY_BUCKETS) -> int:
    """Index of the bucket holding `seconds` (its upper edge is edges[index]; past the last: +Inf)."""
    return bisect.bisect_left(edges, seconds)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A Prometheus that has scraped every observation; the samples by model name."""
    registry = prometheus_client.CollectorRegistry()
    control = prometheus_client.Histogram(DEFAULT_BUCKETS_NAME, "the same samples, default buckets",
                                          ["model"], registry=registry)
    rng = np.random.default_rng(17)
    samples = {}
    for model, (median, sigma) in DISTRIBUTIONS.items():
        metrics = hm.PrometheusMetrics(model, "1.0", registry)
        samples[model] = rng.lognormal(np.log(median), sigma, SAMPLES)
        for s in samples[model]:
            metrics.request("rest", 200, float(s))
            control.labels(model=model).observe(float(s))
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry)
    run = tmp_path_factory.mktemp("quantiles")
    prom = Prometheus(run, write_config(run, {names.KSERVE_NATIVE: [f"127.0.0.1:{port}"]}), free_port()).start(timeout=60)
    try:
        count = f"{hm.REQUEST_SECONDS}_count"
        assert prom.wait_for(f"sum({count}) == {SAMPLES * len(DISTRIBUTIONS)}", timeout=30), "never scraped"
        yield prom, samples
    finally:
        prom.stop()
        server.shutdown()
        thread.join(timeout=5)


def estimate(prom: Prometheus, metric: str, selector: str, q: float) -> float:
    result = prom.query(f"histogram_quantile({q}, sum by (le) ({metric}_bucket{{{selector}}}))")
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.mark.parametrize("model", DISTRIBUTIONS)
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_recorded_quantiles_are_within_one_bucket_of_the_truth(scraped, model, q):
    prom, samples = scraped
    truth = float(np.quantile(samples[model], q))
    got = estimate(prom, hm.REQUEST_SECONDS, f'{names.MODEL}="{model}", protocol="rest", code="2xx"', q)
    print(f"{model} p{round(q * 100)}: true {truth * 1e3:.3f} ms, from the buckets {got * 1e3:.3f} ms")
    assert abs(bucket(got) - bucket(truth)) <= 1, (truth, got)
    assert 0.5 < got / truth < 2  # five buckets a decade: one bucket is a factor 1.6


def test_default_buckets_cannot_resolve_a_fast_model(scraped):
    """Below 5 ms the default buckets only interpolate: the fast model's p50 reads as half the
    first bucket's edge, several of our buckets away from the truth."""
    prom, samples = scraped
    truth = float(np.quantile(samples["fast"], 0.5))
    got = estimate(prom, DEFAULT_BUCKETS_NAME, 'model="fast"', 0.5)
    assert got == pytest.approx(0.0025)
    assert abs(bucket(got) - bucket(truth)) > 1, (truth, got)


def test_buckets_cover_a_tenth_of_a_millisecond_to_ten_seconds_four_or_more_a_decade():
    edges = hm.LATENCY_BUCKETS
    assert edges[0] == 0.0001 and edges[-1] == 10.0 and list(edges) == sorted(set(edges))
    for decade in range(-4, 1):
        inside = [e for e in edges if 10.0 ** decade <= e < 10.0 ** (decade + 1)]
        assert len(inside) >= 4, (decade, inside)

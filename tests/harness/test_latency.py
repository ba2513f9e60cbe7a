"""scripts/harness/latency.py: the nearest-rank quantile that bench, reliability and monitoring share."""
from __future__ import annotations

import math
import random

import pytest

from scripts.harness.bench.points import Point
from scripts.harness.latency import quantile
from scripts.monitoring.load import LoadResult
from scripts.harness.load import Sample, latency_ms
from scripts.harness.reliability.scenarios import ms


def test_nearest_rank_on_a_known_distribution():
    values = list(range(1, 101))  # 1..100, shuffled: order must not matter
    random.Random(0).shuffle(values)
    assert (quantile(values, 0.5), quantile(values, 0.95), quantile(values, 0.99), quantile(values, 1.0)) == \
        (50, 95, 99, 100)
    assert quantile(values, 0.0) == 1


def test_it_is_always_an_observed_value():
    values = [0.010, 0.012, 0.500]
    assert quantile(values, 0.5) == 0.012 and quantile(values, 0.9) == 0.500  # no interpolation


def test_no_data_and_bad_q():
    assert math.isnan(quantile([], 0.5))
    with pytest.raises(ValueError, match="outside"):
        quantile([1.0], 1.5)


def test_every_load_tool_uses_it():
    """bench, reliability and monitoring answer the same for the same latencies."""
    secs = [0.001 * i for i in range(1, 21)]
    point = Point("t", 1, latencies=list(secs))
    load = LoadResult(latencies=list(secs))
    samples = [Sample(i, sent=0.0, done=x, ok=True, status=200, version="1.0", error="") for i, x in enumerate(secs)]
    for q in (0.5, 0.95):
        want = quantile(secs, q) * 1e3
        assert point.quantile_ms(q) == pytest.approx(want)
        assert load.quantile(q) * 1e3 == pytest.approx(want)
        assert latency_ms(samples, q) == pytest.approx(want)
        assert ms(samples, q) == pytest.approx(round(want, 1))

"""scripts/harness/load.py: the one load generator of bench, reliability and monitoring."""
from __future__ import annotations

import threading
import time

import pytest

from scripts.harness.load import Load, Outcome, Sample, latency_ms, loopback_only


def test_every_request_is_one_sample_with_its_own_outcome():
    load = Load(lambda: (lambda i: Outcome(i % 3 != 0, 200 if i % 3 else 400)), concurrency=3, seconds=30,
                max_requests=60)
    samples = load.run()
    assert sorted(s.index for s in samples) == list(range(60))  # each number sent once, none lost
    assert all(s.ok == (s.index % 3 != 0) and s.status == (200 if s.index % 3 else 400) for s in samples)
    assert all(s.done >= s.sent >= load.started for s in samples)
    assert load.sent == 60 and load.in_flight == 0


def test_a_raising_sender_is_a_failed_request_with_status_0():
    def sender():
        def send(i):
            if i == 1:
                raise ConnectionError("refused")
            return Outcome(True)
        return send

    samples = {s.index: s for s in Load(sender, 1, seconds=30, max_requests=3).run()}
    assert (samples[1].ok, samples[1].status, samples[1].error) == (False, 0, "ConnectionError: refused")
    assert samples[0].ok and samples[2].ok


def test_one_sender_per_client_and_all_clients_start_together():
    made, first_sends, lock = [], [], threading.Lock()

    def sender():
        time.sleep(0.02 * len(made))  # clients get ready at different times
        with lock:
            made.append(time.perf_counter())

        def send(i):
            with lock:
                first_sends.append(time.perf_counter())
            return Outcome(True)
        return send

    samples = Load(sender, concurrency=5, seconds=30, max_requests=5, per_client=1).run()
    assert len(made) == 5 and len(samples) == 5
    assert max(made) <= min(first_sends)  # the burst starts when the last client is ready


def test_warm_up_requests_are_sent_but_not_recorded():
    calls = []

    def sender():
        def send(i):
            calls.append(i)
            return Outcome(True)
        return send

    load = Load(sender, concurrency=1, seconds=30, max_requests=10, warmup_seconds=0.05)
    samples = load.run()
    assert len(samples) == 10 and len(calls) > 10
    assert [s.index for s in samples] == list(range(10))


def test_the_deadline_ends_the_load():
    load = Load(lambda: (lambda i: time.sleep(0.01) or Outcome(True)), concurrency=2, seconds=0.3)
    samples = load.run()
    assert samples and max(s.sent for s in samples) < load.deadline  # nothing starts after it
    assert load.finished - load.deadline < 0.5  # only the requests in flight finish after it


def test_stop_ends_it_early():
    with Load(lambda: (lambda i: time.sleep(0.01) or Outcome(True)), concurrency=2, seconds=60) as load:
        time.sleep(0.1)
        load.stop()
    assert load.finished - load.started < 5


def test_latency_quantiles_use_the_shared_rule():
    samples = [Sample(i, 0.0, 0.001 * (i + 1), ok=i != 0, status=200, version=None, error="") for i in range(20)]
    assert latency_ms(samples, 0.5) == pytest.approx(11)  # ok only: 2..20 ms
    assert latency_ms(samples, 0.5, only_ok=False) == pytest.approx(10)


def test_load_goes_to_loopback_only():
    assert loopback_only("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match="loopback only"):
        loopback_only("http://example.com:8080")

"""scripts/harness/machine.py: one description of the machine for every results file."""
from __future__ import annotations

import os

import pytest

from scripts.harness import machine
from scripts.harness.bench import report
from scripts.harness.reliability.settings import ReliabilitySettings
from scripts.harness.reliability.suite import SuiteResult, to_markdown


@pytest.mark.integration
def test_one_description_with_the_keys_both_reports_read():
    m = machine.describe()
    assert m["cores"] == os.cpu_count() and m["memory_gib"] > 0 and m["cpu"]
    assert {"host", "platform", "python", "torch", "torchserve", "gpu", "commit", "load_average_at_start"} <= set(m)
    assert len(m["commit"]) >= 7 or m["commit"] == "unknown"


@pytest.mark.integration
def test_the_bench_and_reliability_reports_render_it():
    m = machine.describe()
    suite = SuiteResult("quick", "today", 1.0, m, "make reliability")
    text = to_markdown(suite, ReliabilitySettings())
    assert f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}" in text
    bench = report.markdown({"machine": m, "mode": "quick", "date": "d", "command": "c", "model": "x", "images": 1,
                             "duration_s": 1, "warmup_s": 1, "servers": "s", "verdicts": [], "points": [],
                             "inprocess_batches": []})
    assert f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}" in bench

"""scripts/harness/bench/metrics_cost.py: a short real run writes both result files, with a cost
per request for each mode, and each scrape merges every worker's files (its request count is
all the workers' requests)."""
from __future__ import annotations

import json

import pytest

from scripts.harness.bench import metrics_cost


@pytest.mark.integration
def test_a_short_run_records_each_mode_and_scrape(tmp_path):
    assert metrics_cost.main(["--requests", "200", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "metrics-cost.json").read_text())
    result = record["result"]
    for mode in ("in-process", "multiprocess"):
        assert 0 < result[mode]["seconds_per_request"] < 0.01, mode
    for workers in metrics_cost.WORKERS:
        scrape = result["scrape"][str(workers)]
        per_worker = 2 * metrics_cost.REPEATS * metrics_cost.worker_requests(200)  # two models
        assert scrape["requests"] == workers * per_worker, (workers, scrape)
        assert scrape["seconds"] > 0 and scrape["bytes"] > 1000
    text = (tmp_path / "metrics-cost.md").read_text()
    assert "| multiprocess |" in text and record["machine"]["cores"] >= 1

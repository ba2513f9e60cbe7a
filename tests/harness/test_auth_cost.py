"""scripts/harness/bench/auth_cost.py: a short real run serves the model from three runtimes
(no authentication, one token, 64 tokens), each authenticated one refusing a request without its
token, and records a point for every variant, with no error and the ratio to the unauthenticated one."""
from __future__ import annotations

import json

import pytest

from scripts.harness.bench import auth_cost


@pytest.mark.integration
def test_a_short_run_records_every_variant_against_the_unauthenticated_one(trained, data_dir, tmp_path):
    assert auth_cost.main(["--checkpoint", str(trained), "--data-dir", str(data_dir), "--repeats", "1",
                           "--duration", "1", "--concurrency", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "auth-cost.json").read_text())
    assert record["refused_without_token"] == {name: 401 for name, n in auth_cost.VARIANTS.items() if n}
    points = {p["target"]: p for p in record["points"]}
    assert list(points) == list(auth_cost.VARIANTS)
    for name, p in points.items():
        assert p["errors"] == 0 and p["throughput_rps"] > 0 and p["server_cpu_ms"] > 0, (name, p)
    assert points["no authentication"]["vs_first"] == 1.0
    text = (tmp_path / "auth-cost.md").read_text()
    assert "| bearer token, 64 in the file | 1 |" in text and "refused a request without the token" in text

"""scripts/harness/bench/auth_cost.py: a short real run serves the model from three servers of one
runtime (no authentication, one token, 64 tokens), each authenticated one refusing a request without
its token, and records a point for every variant, with no error and the ratio to the unauthenticated
one: on both runtimes (TorchServe through its exporter's proxy), over REST and gRPC."""
from __future__ import annotations

import json

import pytest

from scripts.harness.bench import auth_cost


@pytest.mark.integration
@pytest.mark.parametrize("runtime, protocol", [("kserve-native", "rest"), ("kserve-native", "grpc"),
                                               ("torchserve", "rest"), ("torchserve", "grpc")])
def test_a_short_run_records_every_variant_against_the_unauthenticated_one(runtime, protocol, trained, data_dir,
                                                                           tmp_path):
    assert auth_cost.main(["--checkpoint", str(trained), "--data-dir", str(data_dir), "--repeats", "1",
                           "--duration", "1", "--concurrency", "1", "--out", str(tmp_path),
                           "--runtime", runtime, "--transport", protocol]) == 0
    stem = auth_cost.stem(runtime, protocol)
    assert stem == {"kserve-native": "auth-cost", "torchserve": "auth-cost-torchserve"}[runtime] + (
        "-grpc" if protocol == "grpc" else "")
    record = json.loads((tmp_path / f"{stem}.json").read_text())
    refusal = "UNAUTHENTICATED" if protocol == "grpc" else "401"
    assert record["refused_without_token"] == {name: refusal for name, n in auth_cost.VARIANTS.items() if n}
    points = {p["target"]: p for p in record["points"]}
    assert list(points) == list(auth_cost.VARIANTS)
    for name, p in points.items():
        assert p["errors"] == 0 and p["throughput_rps"] > 0 and p["server_cpu_ms"] > 0, (name, p)
    assert points["no authentication"]["vs_first"] == 1.0
    text = (tmp_path / f"{stem}.md").read_text()
    assert "| bearer token, 64 in the file | 1 |" in text and "refused a request without the token" in text
    assert auth_cost.RUNTIMES[runtime] in text and auth_cost.ROUTES[runtime, protocol] in text

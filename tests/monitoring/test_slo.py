"""The SLOs: objectives defined once (slo.Objectives = the chart's `slo` values), rendered by the
chart as parameter series beside the generated rules, a latency threshold that is one of the
histogram's `le` labels as the handler's client library spells them, and promtool unit tests
that fail when an objective changes (the burn-rate cases in rules_tests.py are not vacuous)."""
from __future__ import annotations

import json
import shutil
import subprocess

import prometheus_client
import pytest
import yaml

from handlers import metrics as hm
from scripts.deploy import k8s_render
from scripts.monitoring import rules, rules_tests, slo

VALUES = yaml.safe_load((k8s_render.CHART / "values.yaml").read_text())
SCHEMA = json.loads((k8s_render.CHART / "values.schema.json").read_text())


def chart_rule(*args: str) -> dict:
    objs = [o for _, o in k8s_render.split_documents(k8s_render.helm_template(*args))]
    return next(o for o in objs if o["kind"] == "PrometheusRule")


def test_objectives_are_the_chart_defaults():
    o = slo.Objectives()
    assert VALUES["slo"] == {"availability": o.availability, "latency": o.latency,
                             "latencyThresholdSeconds": o.latency_threshold}


def test_the_schema_offers_exactly_the_bucket_edges():
    enum = SCHEMA["properties"]["slo"]["properties"]["latencyThresholdSeconds"]["enum"]
    assert enum == list(slo.bucket_edges())
    assert {float(e) for e in enum} < set(hm.LATENCY_BUCKETS)


def test_the_threshold_is_spelled_as_the_exposition_spells_le():
    """The parameter's `le` label must equal the bucket's label character for character."""
    registry = prometheus_client.CollectorRegistry()
    hm.PrometheusMetrics("m", "1.0", registry).request("rest", 200, 0.01)
    les = {s.labels["le"] for fam in registry.collect() for s in fam.samples
           if s.name == f"{hm.REQUEST_SECONDS}_bucket"}
    assert set(slo.bucket_edges()) <= les


@pytest.mark.parametrize("bad", [{"latency_threshold": "0.3"}, {"latency_threshold": "1.0"},
                                 {"availability": 1.0}, {"latency": 0}])
def test_objectives_refuse_what_cannot_work(bad):
    with pytest.raises(ValueError):
        slo.Objectives(**bad)


@pytest.mark.integration
@pytest.mark.parametrize("sets, objectives", [
    ((), slo.Objectives()),
    (("--set-json", "slo.availability=0.995", "--set", "slo.latencyThresholdSeconds=0.1"),
     slo.Objectives(availability=0.995, latency_threshold="0.1")),
])
def test_the_chart_renders_the_generated_rules_and_its_models_objectives(sets, objectives):
    cr = chart_rule("--namespace", "models", *sets)
    namespace = cr["metadata"]["namespace"]
    models = [m["name"] for m in VALUES["models"]]
    want = rules.prometheus_rule(cr["metadata"]["name"], namespace, models=models, objectives=objectives)
    assert cr["spec"]["groups"] == want["spec"]["groups"]
    assert cr["spec"]["groups"][-1]["name"] == slo.PARAMETER_GROUP


@pytest.mark.integration
@pytest.mark.parametrize("bad", ["slo.latencyThresholdSeconds=0.3", "slo.availability=1", "slo.latency=0"])
def test_the_chart_refuses_objectives_that_cannot_work(bad):
    with pytest.raises(k8s_render.ToolError, match="slo"):
        k8s_render.helm_template("--set", bad)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: make setup installs Debian prometheus")
def test_burn_rate_tests_fail_when_an_objective_changes(tmp_path):
    """The same series against looser objectives: the pages and tickets expected of them go quiet."""
    test_file = rules_tests.write(tmp_path)
    loose = rules.rules_file(namespace="ns", models=rules_tests.SLO_MODELS,
                             objectives=slo.Objectives(availability=0.99, latency=0.9))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(loose, sort_keys=False, width=200))
    out = subprocess.run([shutil.which("promtool"), "test", "rules", test_file.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    for alert in slo.ALERTS.values():
        assert alert in out.stdout + out.stderr, alert

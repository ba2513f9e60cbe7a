"""The chart's KEDA option: KServe's autoscalerClass keda with one External metric per model, a
Prometheus query of the series the chart's own recording rules write (scripts/monitoring/rules.py
scaling_query: the promtool case in rules_tests.py shows its value for given series), valid
against the real KServe CRD (test_k8s.py validates every ci/ values file, keda-values.yaml too),
and refused where it cannot work. KServe's real controller turning it into a ScaledObject is
tests/cluster/test_kserve_controller.py's (no KEDA operator runs here)."""
from __future__ import annotations

import pytest
import yaml

from scripts.deploy import k8s_render
from scripts.monitoring import rules
from tests.deploy.kserve_pod import of_kind, render

pytestmark = pytest.mark.integration  # runs helm

KEDA_VALUES = yaml.safe_load((k8s_render.CHART / "ci" / "keda-values.yaml").read_text())["autoscaling"]["keda"]


def test_each_model_scales_on_its_recorded_series():
    isvcs = of_kind(render("keda-values.yaml"), "InferenceService")
    assert len(isvcs) == 2
    for isvc in isvcs:
        meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
        assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
        assert "scaleMetric" not in predictor and "scaleTarget" not in predictor
        want = rules.scaling_query(KEDA_VALUES["signal"], meta["namespace"], meta["name"])
        assert predictor["autoScaling"] == {"metrics": [{"type": "External", "external": {
            "metric": {"backend": "prometheus", "serverAddress": KEDA_VALUES["serverAddress"], "query": want},
            # KServe v0.20's keda_reconciler.go takes an External metric's threshold from
            # target.value only; KEDA's Prometheus trigger then averages it over the replicas
            "target": {"type": "Value", "value": KEDA_VALUES["target"]}}}]}


@pytest.mark.parametrize("signal", sorted(rules.SCALING_SIGNALS))
def test_every_signal_is_a_recorded_series(signal):
    objs = render_with("--set", "autoscaling.keda.enabled=true", "--set", f"autoscaling.keda.signal={signal}")
    query = of_kind(objs, "InferenceService")[0]["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
    recorded = {r["record"] for r in rules.recording_rules()}
    assert rules.SCALING_SIGNALS[signal] in recorded
    assert query.startswith(f"sum({rules.SCALING_SIGNALS[signal]}{{")


def test_hpa_stays_the_default():
    for isvc in of_kind(render(None), "InferenceService"):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
        assert "autoScaling" not in isvc["spec"]["predictor"]


@pytest.mark.parametrize("sets, message", [
    (("--set", "deploymentMode=Knative", "--set", "autoscaling.metric=concurrency"), "needs deploymentMode Standard"),
    (("--set", "monitoring.prometheusRule.enabled=false"), "needs monitoring.prometheusRule.enabled"),
    (("--set", "autoscaling.keda.signal=latency"), "signal"),
    (("--set", "autoscaling.keda.target=four"), "target"),
])
def test_keda_is_refused_where_it_cannot_work(sets, message):
    with pytest.raises(k8s_render.ToolError, match=message):
        k8s_render.helm_template("--set", "autoscaling.keda.enabled=true", *sets)


def render_with(*args: str) -> list[dict]:
    return [o for _, o in k8s_render.split_documents(k8s_render.helm_template(*args))]

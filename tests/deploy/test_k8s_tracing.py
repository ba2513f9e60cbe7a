"""The chart's `tracing` values: the standard OTEL_* variables on the KServe-native runtime's
container, read back by the runtime's own parser (scripts/runtime/tracing.py); off by default,
never on TorchServe's, and refused where they cannot work. The pod of ci/tracing-values.yaml runs
from the runtime image in tests/containers/test_pods.py; traces reaching a real backend are
tests/runtime/test_tracing_jaeger.py's."""
from __future__ import annotations

import pytest
import yaml

from scripts.deploy import k8s_render
from scripts.runtime.tracing import exporter_wanted, otlp_protocol
from tests.deploy.kserve_pod import render

pytestmark = pytest.mark.integration  # runs helm

TRACING = yaml.safe_load((k8s_render.CHART / "ci" / "tracing-values.yaml").read_text())["tracing"]


def runtime_env(objs: list[dict], runtime: str) -> dict[str, str]:
    [sr] = [o for o in objs if o["kind"] == "ServingRuntime" and o["metadata"]["name"].endswith(runtime)]
    return {e["name"]: e["value"] for e in sr["spec"]["containers"][0].get("env", [])}


def test_the_values_become_the_standard_variables_the_runtime_reads():
    env = runtime_env(render("tracing-values.yaml"), "kserve-native")
    otel = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    assert otel == {"OTEL_EXPORTER_OTLP_ENDPOINT": TRACING["endpoint"], "OTEL_EXPORTER_OTLP_PROTOCOL": TRACING["protocol"],
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": str(TRACING["sampleRatio"]), "OTEL_SERVICE_NAME": "image-classifier",
                    "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=image-classifier"}
    assert exporter_wanted(env) == "otlp" and otlp_protocol(env) == TRACING["protocol"]


def test_traces_are_off_by_default_and_never_on_torchserve():
    default = render(None)
    assert exporter_wanted(runtime_env(default, "kserve-native")) is None
    on = k8s_render.helm_template("--set", "tracing.enabled=true", "--set", "tracing.endpoint=http://c:4318",
                                  "--set", "tracing.protocol=grpc")
    objs = [o for _, o in k8s_render.split_documents(on)]
    assert not [k for k in runtime_env(objs, "torchserve") if k.startswith("OTEL_")]
    assert otlp_protocol(runtime_env(objs, "kserve-native")) == "grpc"


@pytest.mark.parametrize("sets, message", [
    (("--set", "tracing.enabled=true"), "tracing.enabled needs tracing.endpoint"),
    (("--set", "tracing.endpoint=collector:4318"), "endpoint"),
    (("--set", "tracing.protocol=http/json"), "protocol"),
    (("--set-json", "tracing.sampleRatio=1.5"), "sampleRatio"),
])
def test_tracing_values_that_cannot_work_are_refused(sets, message):
    with pytest.raises(k8s_render.ToolError, match=message):
        k8s_render.helm_template(*sets)

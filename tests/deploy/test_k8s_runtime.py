"""The rendered chart against what KServe's controller and Knative's webhook do with it, checked
statically (tests/deploy/kserve_pod.py emulates the control plane): every port a Service or Prometheus
reaches listens on every interface, and Knative accepts every predictor container and routes each
protocol to the port that speaks it. The pods themselves run from their images in tests/containers/test_pods.py.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.deploy.kserve_pod import (PodCheckError, bind_addresses, knative_container_errors, merged_container,
                              metrics_ports, of_kind, one, render, runtime_of, serving_port)

pytestmark = pytest.mark.integration  # helm renders the chart for every test

REPO = Path(__file__).resolve().parents[2]
CI_VALUES = REPO / "charts" / "image-classifier" / "ci"
VALUES_FILES = [None, *sorted(p.name for p in CI_VALUES.glob("*.yaml"))]


def check_routed_ports_bind_every_interface(objs, isvc: dict) -> None:
    """In a pod, what a Service or Prometheus reaches must listen on 0.0.0.0 (the pod IP)."""
    container = merged_container(runtime_of(objs, isvc), isvc)
    binds = bind_addresses(container)
    routed = {p["containerPort"] for p in container.get("ports", [])} | metrics_ports(objs, isvc)
    wrong = {p: binds.get(p, "nothing") for p in sorted(routed) if binds.get(p) != "0.0.0.0"}
    if wrong:
        raise PodCheckError(f"{isvc['metadata']['name']}: routed ports not bound on 0.0.0.0: {wrong} "
                            f"(listeners: {binds})")


@pytest.mark.parametrize("values", VALUES_FILES)
def test_routed_ports_bind_every_interface(values):
    objs = render(values)
    for isvc in of_kind(objs, "InferenceService"):
        check_routed_ports_bind_every_interface(objs, isvc)


def knative_objs(tmp_path: Path) -> list[dict]:
    """Knative mode with every (runtime, protocol) pair the chart allows."""
    values = tmp_path / "knative-all.yaml"
    models = [{"name": f"m-{rt}-{proto}", "runtime": rt, "protocol": proto,
               "storageUri": f"pvc://image-classifier-models/m-{rt}-{proto}"}
              for rt, proto in [("torchserve", "v1"), ("torchserve", "v2"), ("kserve-native", "v1"),
                                ("kserve-native", "v2"), ("kserve-native", "grpc-v2")]]
    values.write_text(yaml.safe_dump({"deploymentMode": "Knative", "models": models,
                                      "autoscaling": {"metric": "concurrency", "target": 4}}))
    return render(str(values))


def test_knative_accepts_every_predictor_container(tmp_path):
    """Knative's webhook refuses a container with two ports; KServe merges the InferenceService's
    ports into the runtime's, so the one port Knative routes must match each model's protocol."""
    checked = 0
    for objs in (knative_objs(tmp_path), render("knative-canary-values.yaml")):
        for isvc in of_kind(objs, "InferenceService"):
            container = merged_container(runtime_of(objs, isvc), isvc)
            assert knative_container_errors(container) == [], isvc["metadata"]["name"]
            protocol = isvc["spec"]["predictor"]["model"]["protocolVersion"]
            expected = {"grpc-v2": 8081}.get(protocol, 8080)
            assert serving_port(container, protocol, knative=True) == expected, isvc["metadata"]["name"]
            checked += 1
    assert checked == 7


def test_knative_rules_refuse_what_the_webhook_refuses(tmp_path):
    objs = copy.deepcopy(knative_objs(tmp_path))
    grpc = one(objs, "InferenceService", "m-kserve-native-grpc-v2")
    runtime = runtime_of(objs, grpc)
    # the defect this chart once had: the runtime's http1 port merged with the model's h2c port
    runtime["spec"]["containers"][0]["ports"] = [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    container = merged_container(runtime, grpc)
    assert knative_container_errors(container) == ["more than one container port: [8080, 8081]"]
    with pytest.raises(PodCheckError, match="Knative refuses the container"):
        serving_port(container, "grpc-v2", knative=True)
    container = {"ports": [{"name": "metrics", "containerPort": 9090}],
                 "readinessProbe": {"httpGet": {"port": "http1", "path": "/"}}}
    assert knative_container_errors(container) == [
        "port name 'metrics' is not one of h2c, http1", "port 9090 is reserved for queue-proxy",
        "readinessProbe port 'http1' does not match the container port's name"]
    # a REST model whose one port is h2c would get HTTP/2 it does not speak
    with pytest.raises(PodCheckError, match="Knative routes v1 to port 8081 named 'h2c'"):
        serving_port({"ports": [{"name": "h2c", "containerPort": 8081}]}, "v1", knative=True)


def test_a_loopback_listener_on_a_routed_port_is_refused():
    objs = copy.deepcopy(render(None))
    command = one(objs, "ServingRuntime", "image-classifier-torchserve")["spec"]["containers"][0]["command"]
    command[command.index("--listen") + 1] = "127.0.0.1:8082"  # the exporter's metrics port
    with pytest.raises(PodCheckError, match=r"not bound on 0.0.0.0: \{8082: '127.0.0.1'\}"):
        check_routed_ports_bind_every_interface(objs, one(objs, "InferenceService", "fashion-mnist"))

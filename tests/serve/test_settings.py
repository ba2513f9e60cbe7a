import pytest

from handlers.settings import ServingSettings


def test_defaults_are_torchserve_ports_on_loopback():
    s = ServingSettings()
    assert (s.host, s.inference_port, s.management_port, s.metrics_port) == ("127.0.0.1", 8080, 8081, 8082)
    assert s.metrics_url == "http://127.0.0.1:8082/metrics"


def test_environment_overrides_each_listener():
    s = ServingSettings.from_env({"SERVE_HOST": "0.0.0.0", "SERVE_INFERENCE_PORT": "9000",
                                  "SERVE_GRPC_INFERENCE_PORT": "9100", "UNRELATED": "x"})
    assert (s.host, s.inference_port, s.grpc_inference_port, s.metrics_port) == ("0.0.0.0", 9000, 9100, 8082)


def test_bad_port_is_a_clear_error():
    with pytest.raises(ValueError, match="SERVE_METRICS_PORT must be a port number"):
        ServingSettings.from_env({"SERVE_METRICS_PORT": "eighty"})


def test_torchserve_env_uses_torchserves_own_variable_names():
    env = ServingSettings(host="0.0.0.0", inference_port=1, management_port=2, metrics_port=3, frontend_metrics_port=6,
                          grpc_inference_port=4, grpc_management_port=5).torchserve_env()
    # the frontend's own metrics stay on loopback: the exporter serves metrics_port (handlers/exporter.py)
    assert env == {
        "TS_INFERENCE_ADDRESS": "http://0.0.0.0:1", "TS_MANAGEMENT_ADDRESS": "http://0.0.0.0:2",
        "TS_METRICS_ADDRESS": "http://127.0.0.1:6", "TS_GRPC_INFERENCE_ADDRESS": "0.0.0.0",
        "TS_GRPC_INFERENCE_PORT": "4", "TS_GRPC_MANAGEMENT_ADDRESS": "0.0.0.0",
        "TS_GRPC_MANAGEMENT_PORT": "5", "TS_CORS_ALLOWED_ORIGIN": "http://0.0.0.0:8090",
        "TS_CORS_ALLOWED_METHODS": "GET, POST, OPTIONS", "TS_CORS_ALLOWED_HEADERS": "Content-Type, Authorization"}


def test_authenticated_torchserve_listens_on_loopback_ports_of_its_own():
    """Behind the exporter's token check (handlers/auth_proxy.py), which holds the public ports."""
    s = ServingSettings(host="0.0.0.0", inference_port=1, grpc_inference_port=4, inference_upstream_port=7,
                        grpc_inference_upstream_port=8)
    env = s.torchserve_env(authenticated=True)
    assert (env["TS_INFERENCE_ADDRESS"], env["TS_GRPC_INFERENCE_ADDRESS"], env["TS_GRPC_INFERENCE_PORT"]) == (
        "http://127.0.0.1:7", "127.0.0.1", "8")
    assert {k: v for k, v in env.items() if "INFERENCE" not in k} == {
        k: v for k, v in s.torchserve_env().items() if "INFERENCE" not in k}


def test_cors_origin_defaults_to_the_try_it_page_and_can_be_set():
    assert ServingSettings(ui_port=9999).allowed_origin == "http://127.0.0.1:9999"
    s = ServingSettings.from_env({"SERVE_CORS_ORIGIN": "https://demo.example.org"})
    assert s.torchserve_properties()["cors_allowed_origin"] == "https://demo.example.org"


def test_one_default_model_name():
    """The Makefile's MODEL, the default dataset (model/data.py cannot import the tools) and every
    tool's default are scripts.serve.settings.DEFAULT_MODEL."""
    import argparse
    import re
    from pathlib import Path

    from model import data
    from scripts.serve import archive
    from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert re.search(r"^MODEL\s*\?=\s*(\S+)", makefile, re.M).group(1) == DEFAULT_MODEL
    p = argparse.ArgumentParser()
    data.add_source_args(p)
    assert p.get_default("dataset") == DEFAULT_MODEL in data.loadable()
    parse = archive.get_args_parser().parse_args
    assert archive.served_name(parse(["--checkpoint", "model.pt"])) == DEFAULT_MODEL
    assert archive.served_name(parse(["--from-registry", "models:/mine@prod"])) is None  # the registered name
    assert DEFAULT_CHECKPOINT.parent.name == DEFAULT_MODEL

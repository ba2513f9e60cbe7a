"""The TorchServe pod's metrics exporter (handlers/exporter.py): TorchServe's access log read into
the request histogram, across rollovers; the merged /metrics of a real TorchServe run under it,
with the handler's fine buckets; TorchServe's exit status and signals passed through."""
import json
import signal
import subprocess
import sys
import threading
import time

import prometheus_client
import pytest
import requests

from handlers import exporter
from handlers import metrics as hm
from scripts.serve.process import free_ports
from tests.helpers import IMAGENET_NAME, MODEL_NAME, metric_value as value

REST_LINES = [
    '2026-12-01T02:22:21,348 - /127.0.0.1:45918 "POST /predictions/m HTTP/1.1" 200 3',
    '2026-12-01T02:22:21,349 - /127.0.0.1:45918 "POST /predictions/m/1.0 HTTP/1.1" 400 1',
    '2026-12-01T02:22:21,350 - /127.0.0.1:45918 "POST /v1/models/m:predict HTTP/1.1" 503 0',
    '2026-12-01T02:22:21,351 - /127.0.0.1:45918 "POST /v2/models/m/versions/1.0/infer HTTP/1.1" 200 12',
    # not inference requests to a served model: not recorded
    '2026-12-01T02:22:21,352 - /127.0.0.1:45918 "GET /models/m/all HTTP/1.1" 200 52',
    '2026-12-01T02:22:21,353 - /127.0.0.1:45918 "POST /predictions/no-such-model HTTP/1.1" 404 1',
    '2026-12-01T02:22:21,354 - /127.0.0.1:45918 "GET /ping HTTP/1.1" 200 0',
    "a line that is not an access log line",
]
GRPC_LINES = [
    '2026-12-01T02:22:58,559 - /127.0.0.1:37870 "gRPC org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelInfer HTTP/2.0" 0 82',
    '2026-12-01T02:22:58,630 - /127.0.0.1:37876 "gRPC org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions HTTP/2.0" 3 9',
    '2026-12-01T02:22:58,631 - /127.0.0.1:37876 "gRPC org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions HTTP/2.0" 14 9',
    '2026-12-01T02:22:58,632 - /127.0.0.1:37876 "gRPC org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping HTTP/2.0" 0 1',
]


def request_count(text: str, **labels) -> float:
    return value(text, f"{hm.REQUEST_SECONDS}_count", **labels)


def test_access_log_lines_become_request_observations(tmp_path):
    registry = prometheus_client.CollectorRegistry()
    log = exporter.AccessLog(tmp_path / "access_log.log", {"m": "1.0"}, registry)
    for line in REST_LINES + GRPC_LINES:
        log.observe(line)
    text = prometheus_client.generate_latest(registry).decode()
    labels = {"ModelName": "m", "ModelVersion": "1.0", "Level": "Model"}
    assert request_count(text, **labels, protocol="rest", code="2xx") == 2
    assert request_count(text, **labels, protocol="rest", code="4xx") == 1
    assert request_count(text, **labels, protocol="rest", code="5xx") == 1
    assert value(text, f"{hm.REQUEST_SECONDS}_sum", **labels, protocol="rest") == pytest.approx(0.016)
    # one model served: its gRPC inference calls are its own (OK, INVALID_ARGUMENT, UNAVAILABLE)
    assert request_count(text, **labels, protocol="grpc") == 3
    assert [request_count(text, **labels, protocol="grpc", code=c) for c in hm.CODES] == [1, 1, 1]
    assert 'ModelName="no-such-model"' not in text
    # 12 ms lies in the bucket (0.01, 0.016]
    assert value(text, f"{hm.REQUEST_SECONDS}_bucket", **labels, protocol="rest", code="2xx", le="0.01") == 1
    assert value(text, f"{hm.REQUEST_SECONDS}_bucket", **labels, protocol="rest", code="2xx", le="0.016") == 2


def test_grpc_lines_are_skipped_where_the_model_is_unknown(tmp_path):
    registry = prometheus_client.CollectorRegistry()
    log = exporter.AccessLog(tmp_path / "access_log.log", {"a": "1.0", "b": "2.0"}, registry)
    for line in GRPC_LINES + [REST_LINES[0].replace("/predictions/m", "/predictions/b")]:
        log.observe(line)
    text = prometheus_client.generate_latest(registry).decode()
    assert request_count(text, protocol="grpc") == 0
    assert request_count(text, ModelName="b", ModelVersion="2.0", protocol="rest") == 1


def test_the_access_log_is_followed_across_a_rollover(tmp_path):
    path = tmp_path / "access_log.log"
    registry = prometheus_client.CollectorRegistry()
    log = exporter.AccessLog(path, {"m": "1.0"}, registry)
    stop = threading.Event()
    follower = threading.Thread(target=log.follow, args=(stop, 0.02), daemon=True)
    follower.start()
    count = lambda: request_count(prometheus_client.generate_latest(registry).decode(), protocol="rest")  # noqa: E731

    def wait_for(n):
        deadline = time.monotonic() + 10
        while count() != n and time.monotonic() < deadline:
            time.sleep(0.02)
        return count()

    try:
        time.sleep(0.1)  # the log does not exist yet: nothing breaks
        with open(path, "a") as f:
            f.write(REST_LINES[0] + "\n" + REST_LINES[1][:40])  # a line half written
            f.flush()
            assert wait_for(1) == 1
            f.write(REST_LINES[1][40:] + "\n")
        assert wait_for(2) == 2
        path.rename(tmp_path / "access_log.01-Dec.log")  # log4j's rollover: a new file, same name
        path.write_text(REST_LINES[3] + "\n")
        assert wait_for(3) == 3
    finally:
        stop.set()
        follower.join(5)


def write_config(path, models: dict[str, str]):
    snapshot = {name: {version: {"defaultVersion": True}} for name, version in models.items()}
    path.write_text("inference_address=http://127.0.0.1:1\nmodel_snapshot=" + json.dumps({"models": snapshot}) + "\n")
    return path


@pytest.mark.integration
@pytest.mark.parametrize("on_sigterm, status", [("signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))", 7),
                                                ("", 128 + signal.SIGTERM)])
def test_the_exporter_passes_signals_and_the_exit_status(tmp_path, on_sigterm, status):
    """The child here is a stand-in process (TorchServe's run is tested below): it exits with its
    own status, or dies of the signal, which the exporter reports as 128 + N (as tini does: the
    pod's exit code 143 for SIGTERM)."""
    config = write_config(tmp_path / "config.properties", {"m": "1.0"})
    child = ("import signal, sys, time\n"
             f"{on_sigterm}\n"
             "print('started', flush=True)\n"
             "time.sleep(60)\n")
    port, frontend = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-m", "handlers.exporter", "--listen", f"127.0.0.1:{port}",
                             "--frontend-port", str(frontend), "--config", str(config),
                             "--multiproc-dir", str(tmp_path / "mp"), "--log-location", str(tmp_path),
                             "--", sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while True:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert text.startswith("# frontend metrics unavailable")  # nothing on the frontend port
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=2).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == status
    finally:
        proc.kill()


def test_the_exporter_needs_a_command(tmp_path, capsys):
    with pytest.raises(SystemExit, match="after --"):
        exporter.main(["--listen", "127.0.0.1:1", "--frontend-port", "2", "--config", "c"])


def test_authentication_needs_both_listeners_and_a_token_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SERVE_TOKEN_FILE", raising=False)
    base = ["--listen", "127.0.0.1:1", "--frontend-port", "2", "--config", "c"]
    listens = ["--inference-listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:7070"]
    with pytest.raises(SystemExit):
        exporter.parse_args([*base, "--token-file", "t", "--inference-listen", "0.0.0.0:8080", "--", "ts"])
    with pytest.raises(SystemExit):
        exporter.parse_args([*base, *listens, "--", "ts"])  # a listener without tokens would authenticate nobody
    monkeypatch.setenv("SERVE_TOKEN_FILE", "/var/run/tokens/tokens")  # as the chart sets it
    args, command = exporter.parse_args([*base, *listens, "--", "ts"])
    assert args.token_file == "/var/run/tokens/tokens" and command == ["ts"]
    assert (args.inference_listen, args.grpc_listen) == (("0.0.0.0", 8080), ("0.0.0.0", 7070))


def test_the_proxy_forwards_to_torchserve_on_loopback_only(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:8093\ngrpc_inference_address=127.0.0.1\n"
                      "grpc_inference_port=7072\nmax_request_size=1000\ncors_allowed_origin=http://127.0.0.1:8090\n")
    upstream = exporter.proxied_upstream(config, env={})
    assert (upstream.rest_url, upstream.grpc_target, upstream.max_request_bytes) == ("http://127.0.0.1:8093", "127.0.0.1:7072", 1000)
    assert upstream.cors_origin == "http://127.0.0.1:8090"
    # TorchServe's TS_* variables win over the file, as TorchServe reads them
    env = {"TS_MAX_REQUEST_SIZE": "2000", "TS_GRPC_INFERENCE_PORT": "7099", "SERVE_BODY_TIMEOUT_S": "7"}
    upstream = exporter.proxied_upstream(config, env=env)
    assert (upstream.grpc_target, upstream.max_request_bytes, upstream.limits.body_timeout_s) == ("127.0.0.1:7099", 2000, 7)
    for public in ({"TS_INFERENCE_ADDRESS": "http://0.0.0.0:8080"}, {"TS_GRPC_INFERENCE_ADDRESS": "10.0.0.7"}):
        with pytest.raises(SystemExit, match="not loopback"):
            exporter.proxied_upstream(config, env=public)


def test_the_proxy_answers_503_while_torchserve_is_down(tmp_path):
    from handlers.auth import TokenFile
    from handlers.auth_proxy import AuthProxy, Upstream
    from handlers.settings import RequestLimits

    tokens = tmp_path / "tokens"
    tokens.write_text("t0k\n")
    rest, grpc_port, dead_rest, dead_grpc = free_ports(4)  # nothing listens on the last two
    upstream = Upstream(f"http://127.0.0.1:{dead_rest}", f"127.0.0.1:{dead_grpc}", max_request_bytes=1000,
                        limits=RequestLimits(body_timeout_s=5))
    proxy = AuthProxy(upstream, TokenFile(tokens), ("127.0.0.1", rest), ("127.0.0.1", grpc_port)).start()
    try:
        r = requests.post(f"http://127.0.0.1:{rest}/predictions/m", data=b"x", headers={"Authorization": "Bearer t0k"}, timeout=10)
        assert r.status_code == 503 and r.json()["reason"] == "unavailable" and r.headers["retry-after"] == "1"
        assert requests.get(f"http://127.0.0.1:{rest}/ping", timeout=10).status_code == 503  # open, and honest
    finally:
        proxy.stop()


@pytest.mark.integration
def test_torchserve_metrics_come_merged_with_fine_buckets(torchserve, samples):
    """TorchServe run under the exporter (scripts/serve/torchserve.py, as the chart runs it): one
    /metrics has the frontend's metrics and the handler's, each family once; the handler's
    histograms resolve below 5 ms; every inference request is in the request histogram."""
    out_dir, listed = samples
    url = f"{torchserve.settings.inference_url}/predictions/{MODEL_NAME}"
    metrics_url = torchserve.settings.metrics_url
    labels = {"ModelName": MODEL_NAME, "ModelVersion": "1.0", "Level": "Model"}
    before = requests.get(metrics_url, timeout=10).text
    png = (out_dir / listed[0]["file"]).read_bytes()
    for _ in range(4):
        assert requests.post(url, data=png, timeout=30).status_code == 200
    assert requests.post(url, data=b"junk", timeout=30).status_code == 400
    deadline = time.monotonic() + 10  # the access log is written as each answer goes out
    while True:
        after = requests.get(metrics_url, timeout=10).text
        got = request_count(after, **labels) - request_count(before, **labels)
        if got >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    delta = lambda name, **kw: value(after, name, **labels, **kw) - value(before, name, **labels, **kw)  # noqa: E731
    assert delta(f"{hm.REQUEST_SECONDS}_count", protocol="rest", code="2xx") == 4
    assert delta(f"{hm.REQUEST_SECONDS}_count", protocol="rest", code="4xx") == 1
    assert delta(f"{hm.STAGE_SECONDS}_count", stage="handle") == 5
    assert f'{hm.STAGE_SECONDS}_bucket{{' in after and 'le="0.00063"' in after
    assert value(after, "ts_inference_requests_total") > 0  # the frontend's own, merged
    assert value(after, hm.MODEL_LOAD_SECONDS, **labels) > 0
    ours = [line.split()[2] for line in after.splitlines() if line.startswith("# TYPE image_")]
    assert len(ours) == len(set(ours)), sorted(f for f in ours if ours.count(f) > 1)  # not also the frontend's
    assert f'ModelName="{IMAGENET_NAME}"' in after  # every model of the store

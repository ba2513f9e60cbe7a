"""The TorchServe pod's metrics port: runs TorchServe as its child and serves, on one /metrics,
the frontend's own metrics (read from its loopback metrics port) followed by the handler's
metrics, which TorchServe's workers write with prometheus_client in multiprocess mode (TorchServe
0.12's frontend gives every histogram the default 5 ms .. 10 s buckets, too coarse for a fast
model), and a request latency histogram read from TorchServe's access log. It exits with
TorchServe's exit status (128 + N where a signal N ended it); SIGTERM and SIGINT are passed on.

    python -m handlers.exporter --listen 0.0.0.0:8082 --frontend-port 8092 \\
        --config /mnt/models/config/config.properties -- torchserve --start --foreground ...

With a token file (--token-file, or SERVE_TOKEN_FILE as the chart sets it) it also holds the pod's
inference ports (--inference-listen, --grpc-listen) and authenticates every call there before
TorchServe, whose own inference listeners must then be on loopback (handlers/auth_proxy.py).

The access log times a request in whole milliseconds, from its arrival at the frontend to its
answer. A gRPC line names the method but not the model: it is counted only where the server has
one model (a KServe predictor), and skipped otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from handlers import metrics as hm
from handlers.settings import AuthSettings

ACCESS_LOG_NAME = "access_log.log"  # in LOG_LOCATION (TorchServe's log4j2.xml)
# `<time> - /<peer> "<method> <path> <proto>" <status> <ms>`; gRPC lines: method "gRPC", the
# service/method as path, and the gRPC status code as status
ACCESS_LINE = re.compile(r'"(?P<method>\S+) (?P<path>\S+) \S+" (?P<status>\d+) (?P<ms>\d+)\s*$')
REST_INFER = re.compile(r"^/(?:predictions/(?P<ts>[^/?]+)(?:/[^/?]+)?|v1/models/(?P<v1>[^/:?]+)(?:/versions/[^/:?]+)?:predict"
                        r"|v2/models/(?P<v2>[^/?]+)(?:/versions/[^/?]+)?/infer)(?:\?.*)?$")
TS_GRPC = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
TS_OIP_GRPC = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
GRPC_INFER = frozenset({f"{TS_GRPC}/Predictions", f"{TS_GRPC}/StreamPredictions", f"{TS_OIP_GRPC}/ModelInfer"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
TS_DEFAULT_MAX_REQUEST_SIZE = 6553500  # TorchServe's own default
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def snapshot(config: Path) -> dict[str, dict[str, dict]]:
    """Model name → version → its settings, from the model_snapshot line of a TorchServe
    config.properties."""
    for line in Path(config).read_text().splitlines():
        if line.startswith("model_snapshot="):
            return json.loads(line.split("=", 1)[1])["models"]
    raise ValueError(f"{config} has no model_snapshot line")


def torchserve_settings(config: Path, env=os.environ) -> dict[str, str]:
    """TorchServe's settings as it reads them: config.properties, with TS_<NAME> variables over
    each line (our config.properties sets enable_envvars_config=true)."""
    lines = (line.partition("=") for line in Path(config).read_text().splitlines())
    settings = {key.strip(): value.strip() for key, sep, value in lines if sep and not key.lstrip().startswith("#")}
    return {**settings, **{k[3:].lower(): v for k, v in env.items() if k.startswith("TS_")}}


def proxied_upstream(config: Path, env=os.environ):
    """Where the authenticating proxy forwards to: TorchServe's own inference listeners, which must
    be on loopback (anywhere else a caller could go around the token check)."""
    from urllib.parse import urlsplit

    from handlers.auth_proxy import Upstream
    from handlers.settings import RequestLimits

    ts = torchserve_settings(config, env)
    rest, grpc_host, grpc_port = (ts.get(k) for k in ("inference_address", "grpc_inference_address", "grpc_inference_port"))
    if not (rest and grpc_host and grpc_port):
        raise SystemExit("exporter: error: authentication needs TorchServe's inference_address, grpc_inference_address "
                         "and grpc_inference_port (TS_* variables or config.properties)")
    for what, host in (("inference_address", urlsplit(rest).hostname or ""), ("grpc_inference_address", grpc_host)):
        if host not in LOOPBACK:
            raise SystemExit(f"exporter: error: TorchServe's {what} is on {host}, not loopback: callers could reach it "
                             "without a token (the chart moves it to loopback when auth.enabled)")
    cors = ts.get("cors_allowed_origin")
    return Upstream(rest_url=rest.rstrip("/"), grpc_target=f"{grpc_host}:{grpc_port}",
                    max_request_bytes=int(ts.get("max_request_size") or TS_DEFAULT_MAX_REQUEST_SIZE),
                    limits=RequestLimits.from_env(env), cors_origin=None if cors in (None, "", "*") else cors)


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def default_versions(config: Path) -> dict[str, str]:
    """Model name → the version TorchServe serves when none is asked for (the snapshot's default)."""
    return {name: next((v for v, m in versions.items() if m.get("defaultVersion")), max(versions))
            for name, versions in snapshot(config).items()}


class AccessLog:
    """Follows TorchServe's access log (across its size and daily rollovers) into the request
    histogram, one observation per inference request to a served model."""

    def __init__(self, path: Path, versions: dict[str, str], registry):
        self.path = Path(path)
        self.metrics = {name: hm.PrometheusMetrics(name, version, registry) for name, version in versions.items()}
        self.only = next(iter(self.metrics.values())) if len(self.metrics) == 1 else None

    def observe(self, line: str) -> None:
        m = ACCESS_LINE.search(line)
        if m is None:
            return
        seconds = int(m["ms"]) / 1000
        if m["method"] == "gRPC":
            if m["path"] in GRPC_INFER and self.only is not None:
                self.only.request("grpc", hm.grpc_http_status(int(m["status"])), seconds)
            return
        path = REST_INFER.match(m["path"]) if m["method"] == "POST" else None
        metrics = self.metrics.get(path["ts"] or path["v1"] or path["v2"]) if path else None
        if metrics is not None:
            metrics.request("rest", int(m["status"]), seconds)

    def follow(self, stop: threading.Event, poll: float = 0.2) -> None:
        handle, inode, partial = None, None, ""
        while not stop.is_set():
            try:
                current = self.path.stat().st_ino
            except FileNotFoundError:
                current = None
            if current != inode:  # created or rolled over: read the new file from its start
                if handle is not None:
                    handle.close()
                handle, inode, partial = (open(self.path, errors="replace") if current else None), current, ""
            chunk = handle.read() if handle is not None else ""
            if not chunk:
                stop.wait(poll)
                continue
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                self.observe(line)


class Exporter:
    """The merged /metrics: the frontend's text, then the metric files of the workers and of this
    process (the access log's requests), merged by prometheus_client's MultiProcessCollector."""

    def __init__(self, frontend_url: str, multiproc_dir: Path):
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.frontend_url = frontend_url
        self.files = CollectorRegistry()
        MultiProcessCollector(self.files, path=str(multiproc_dir))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        try:
            with urllib.request.urlopen(self.frontend_url, timeout=5) as r:
                frontend = r.read()
        except OSError as e:  # the handler's metrics still count while the frontend starts or fails
            frontend = f"# frontend metrics unavailable: {e}\n".encode()
        return frontend + generate_latest(self.files)


def serve(exporter: Exporter, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = exporter.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # Prometheus scrapes every few seconds: no line per scrape
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def fresh_dir(path: Path) -> Path:
    """prometheus_client's multiprocess folder must start empty: files of an earlier run would be
    counted again."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("exporter: error: give TorchServe's command after --")
    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m handlers.exporter", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, type=host_port, metavar="HOST:PORT",
                    help="the merged /metrics (the pod's metrics port)")
    ap.add_argument("--frontend-port", type=int, required=True,
                    help="TorchServe's own metrics port, on loopback (the exporter sets TS_METRICS_ADDRESS)")
    ap.add_argument("--config", type=Path, required=True, help="TorchServe's config.properties (its model_snapshot)")
    ap.add_argument("--multiproc-dir", type=Path, help="the workers' metric files (default: a folder in TMPDIR)")
    ap.add_argument("--log-location", type=Path, default=Path(os.environ.get("LOG_LOCATION", "logs")),
                    help="TorchServe's LOG_LOCATION, where its access log is written")
    auth = ap.add_argument_group("authentication (handlers/auth_proxy.py)")
    auth.add_argument("--token-file", default=AuthSettings.from_env().token_file or None,
                      help="accepted bearer tokens, one per line (default: $SERVE_TOKEN_FILE); none: no authentication")
    auth.add_argument("--inference-listen", type=host_port, metavar="HOST:PORT",
                      help="the pod's REST inference port, authenticated and forwarded to TorchServe's inference_address")
    auth.add_argument("--grpc-listen", type=host_port, metavar="HOST:PORT",
                      help="the pod's gRPC inference port, forwarded to grpc_inference_address:grpc_inference_port")
    args = ap.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        ap.error("give TorchServe's command after --")
    if args.token_file and not (args.inference_listen and args.grpc_listen):
        ap.error("a token file needs --inference-listen and --grpc-listen: the ports where callers are authenticated")
    if (args.inference_listen or args.grpc_listen) and not args.token_file:
        ap.error("--inference-listen and --grpc-listen authenticate callers: give --token-file (or SERVE_TOKEN_FILE)")
    return args, command


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    multiproc = fresh_dir(args.multiproc_dir or Path(tempfile.gettempdir()) / "handler-metrics")
    # this process writes its observations to files there too (read when prometheus_client is
    # first imported, below): one collector merges everything, each family once
    os.environ[hm.MULTIPROC_DIR_ENV] = str(multiproc)
    access_log = AccessLog(args.log_location / ACCESS_LOG_NAME, default_versions(args.config), registry=None)
    stop = threading.Event()
    threading.Thread(target=access_log.follow, args=(stop,), name="access-log", daemon=True).start()
    server = serve(Exporter(f"http://127.0.0.1:{args.frontend_port}/metrics", multiproc), *args.listen)
    proxy = None
    if args.token_file:
        from handlers.auth import TokenFile
        from handlers.auth_proxy import AuthProxy

        proxy = AuthProxy(proxied_upstream(args.config), TokenFile(args.token_file),
                          args.inference_listen, args.grpc_listen).start()
    # the workers import only their archive: nothing from this process's PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TS_METRICS_ADDRESS"] = f"http://127.0.0.1:{args.frontend_port}"
    child = subprocess.Popen(command, env=env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: child.send_signal(signum))
    code = child.wait()
    stop.set()
    server.shutdown()
    if proxy is not None:
        proxy.stop()
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell or tini reports it


if __name__ == "__main__":
    sys.exit(main())

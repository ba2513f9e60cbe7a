"""A local Prometheus (Debian package `prometheus`, 2.42) for `make monitor` and the tests:
prometheus.yml written here, our rules loaded, loopback only, storage in a temp folder,
run as a ServerProcess and queried over its HTTP API."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests
import yaml

from scripts.monitoring import names as n
from scripts.monitoring import rules
from scripts.serve.process import ServerError, ServerProcess

LOCAL_NAMESPACE = "local"  # what Kubernetes service discovery would set
CHART_NAME = "image-classifier"  # the chart's default name: its PodMonitors are <name>-<runtime>


def job_name(runtime: str, namespace: str = LOCAL_NAMESPACE, chart_name: str = CHART_NAME) -> str:
    """The job label prometheus-operator gives the chart's PodMonitor for `runtime` (no jobLabel:
    `<namespace>/<PodMonitor name>`); the local config uses the same, so the live tests see the
    labels a cluster has (tests/monitoring/test_monitoring.py checks the chart still renders these names)."""
    return f"{namespace}/{chart_name}-{runtime}"


def sample_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named `name` in Prometheus exposition text whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and labels.items() <= s.labels.items())


class PrometheusError(ServerError):
    pass


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(f"{name} not found: install the Debian package `prometheus` (make setup does)")
    return path


def write_config(directory: Path, targets: dict[str, list[str]], interval: str = "1s", models=()) -> Path:
    """prometheus.yml scraping, per runtime ("torchserve", "kserve-native"), its `targets`
    (host:port of /metrics) as job `job_name(runtime)`, with the rules file beside it and the SLO
    objectives (the chart's defaults) of `models`. The namespace target label stands in for
    Kubernetes' own."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rules_file = rules.rules_file(namespace=LOCAL_NAMESPACE, models=models)
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules_file, sort_keys=False, width=200))
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{"job_name": job_name(runtime), "metrics_path": "/metrics",
                            "static_configs": [{"targets": hosts, "labels": {n.NAMESPACE: LOCAL_NAMESPACE}}]}
                           for runtime, hosts in targets.items()],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus(ServerProcess):
    name = "Prometheus"
    error = PrometheusError

    def __init__(self, run_dir: Path, config: Path, port: int, host: str = "127.0.0.1"):
        super().__init__(run_dir, "prometheus.out")
        self.config, self.port, self.host = Path(config).resolve(), port, host
        self.url = f"http://{host}:{port}"

    def command(self) -> list[str]:
        return [binary("prometheus"), f"--config.file={self.config}", f"--web.listen-address={self.host}:{self.port}",
                f"--storage.tsdb.path={self.run_dir / 'tsdb'}", "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle"]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query (now, or at the Unix time `at`); raises PrometheusError with Prometheus'
        message for bad PromQL."""
        resp = self.api("query", query=expr, **({"time": at} if at is not None else {}))
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{resp.status_code} for {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        resp = self.api("query_range", query=expr, start=start, end=end, step=step)
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{resp.status_code} for {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30, poll: float = 0.5) -> list[dict]:
        """Polls until `expr` returns at least one series."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(poll)

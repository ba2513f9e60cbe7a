"""Monitoring as code without a server: the rules come from the handler's own names, pass
`promtool check rules` and promtool unit tests (every alert fires on bad input and stays quiet
on good input), the PrometheusRule carries the same groups, the chart's generated files are up to
date, the dashboard has its panels and variables, the local prometheus.yml passes
`promtool check config`, the GPU names are TorchServe's own, and no rule or panel depends on the
job label the chart's PodMonitors/ServiceMonitors give the series (prometheus-operator's naming)."""
from __future__ import annotations

import bisect
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import prometheus_client
import pytest
import yaml
from PIL import Image

from handlers import metrics as hm
from scripts.deploy import k8s_render
from scripts.monitoring import dashboard, generate, load, names, prometheus, rules, rules_tests, slo

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool missing: make setup installs Debian prometheus")


def run_promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_label_names_are_the_ones_the_handler_emits():
    registry = prometheus_client.CollectorRegistry()
    hm.PrometheusMetrics("m", "1.0", registry).record(
        hm.Observation(seconds={"handle": 0.01}, batch_size=1, predicted={"Bag": 1}, rejected={"invalid_image": 1}))
    labels = {s.name: set(s.labels) for fam in registry.collect() for s in fam.samples}
    base = {names.MODEL, names.VERSION, names.LEVEL, names.HOSTNAME}
    assert labels[f"{names.STAGE_SECONDS}_bucket"] == base | {names.STAGE, "le"}
    assert labels[names.REJECTED] == base | {names.REASON}
    assert labels[names.PREDICTIONS] == base | {names.CLASS}
    assert names.HANDLE_STAGE == "handle" and names.REQUESTS_TOTAL == "ts_inference_requests_total"


@needs_promtool
@pytest.mark.integration
def test_committed_rules_pass_promtool_check():
    out = run_promtool("check", "rules", str(generate.FILES_DIR / "rules.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules.rule_groups())} rules found" in out.stdout


@needs_promtool
@pytest.mark.integration
def test_promtool_unit_tests_pass(tmp_path):
    test_file = rules_tests.write(tmp_path)
    out = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = {}
    for t in rules_tests.unit_tests()["tests"]:
        for a in t.get("alert_rule_test", []):
            cases.setdefault(a["alertname"], []).append(len(a["exp_alerts"]))
    assert set(cases) == {a["alert"] for a in rules.every_alert()}
    assert all(any(c) and 0 in c for c in cases.values()), cases


@needs_promtool
@pytest.mark.integration
def test_unit_tests_catch_a_broken_threshold(tmp_path):
    """The firing cases fail when a rule changes: the tests are not vacuous."""
    test_file = rules_tests.write(tmp_path)
    broken = rules.rules_file(rules.Thresholds(p99_seconds=5, rejected_ratio=0.9))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(broken))
    out = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert out.returncode != 0
    assert "ImageClassifierHighLatency" in out.stdout + out.stderr
    assert "ImageClassifierInputsRejected" in out.stdout + out.stderr


def test_prometheus_rule_carries_the_same_groups():
    cr = rules.prometheus_rule("image-classifier", "models")
    assert cr["kind"] == "PrometheusRule" and cr["apiVersion"] == "monitoring.coreos.com/v1"
    assert cr["spec"]["groups"] == rules.rules_file()["groups"]
    committed = yaml.safe_load((generate.FILES_DIR / "rules.yaml").read_text())
    assert committed["groups"] == cr["spec"]["groups"]


def test_generated_files_are_up_to_date():
    assert generate.main(["--check"]) == 0, "run: .venv/bin/python -m scripts.monitoring.generate"


def test_dashboard_has_the_panels_and_variables():
    d = json.loads((generate.FILES_DIR / "dashboard.json").read_text())
    assert d["uid"] == dashboard.UID and d["schemaVersion"] >= 39
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "job", "model", "version"} <= variables
    titles = [p["title"] for p in d["panels"]]
    assert titles == [p.title for p in dashboard.PANELS]
    exprs = "\n".join(t["expr"] for p in d["panels"] for t in p["targets"])
    for needed in [*rules.HANDLE_QUANTILE.values(), *rules.REQUEST_QUANTILE.values(), rules.STAGE_P95,
                   rules.REQUEST_RATE, rules.REJECTED_RATE, rules.IN_FLIGHT, names.REQUEST_SECONDS,
                   names.QUEUE_LATENCY_US, names.QUEUE_WAIT_SECONDS, names.QUEUE_DEPTH, names.INFLIGHT,
                   slo.BAD_RATIO["availability"]["1h"], slo.BAD_RATIO["latency"]["1h"], names.BATCH_SIZE, names.PREDICTIONS,
                   names.CPU_UTILIZATION, names.MEMORY_USED, names.PROCESS_CPU_SECONDS, names.PROCESS_RSS_BYTES,
                   names.GPU_UTILIZATION, names.GPU_MEMORY_UTILIZATION, names.DCGM_GPU_UTIL, names.DCGM_FB_USED]:
        assert needed in exprs, needed
    assert all(p["datasource"]["uid"] == "${datasource}" for p in d["panels"])
    # the latency heatmap reads the buckets as they are: Prometheus' heatmap format, no recalculation
    heatmaps = [p for p in d["panels"] if p["type"] == "heatmap"]
    assert [p["title"] for p in heatmaps] == ["Request latency heatmap"]
    assert heatmaps[0]["targets"][0]["format"] == "heatmap" and heatmaps[0]["options"]["calculate"] is False
    assert f"{names.REQUEST_SECONDS}_bucket" in heatmaps[0]["targets"][0]["expr"]


def test_panels_for_one_runtime_say_so():
    d = json.loads((generate.FILES_DIR / "dashboard.json").read_text())
    described = {p["title"]: p.get("description", "") for p in d["panels"]}
    for spec in dashboard.PANELS:
        assert set(spec.runtimes) <= set(names.RUNTIMES) and spec.runtimes
        says_only = described[spec.title].startswith("TorchServe only.")
        assert says_only == (spec.runtimes == (names.TORCHSERVE,)), spec.title


def test_prometheus_query_resolves_the_variables():
    expr = dashboard.prometheus_query(dashboard.PANELS[3].queries[0].expr, job="ns/x")
    assert "$" not in expr and 'job=~"ns/x"' in expr and 'namespace=~".*"' in expr
    with pytest.raises(ValueError):
        dashboard.prometheus_query("up", jobs="x")


def test_gpu_names_are_the_ones_torchserve_declares():
    """No GPU here, so no live TorchServe shows its GPU gauges: the installed TorchServe's own
    metrics.yaml (what its frontend exports in prometheus mode) must declare the dashboard's names,
    with the label the dashboard groups by."""
    import ts

    declared = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    gauges = {g["name"]: g["dimensions"] for g in declared["ts_metrics"]["gauge"]}
    for name in (names.GPU_UTILIZATION, names.GPU_MEMORY_UTILIZATION, names.CPU_UTILIZATION, names.MEMORY_USED):
        assert name in gauges, name
    assert names.DEVICE_ID in gauges[names.GPU_UTILIZATION] and names.DEVICE_ID in gauges[names.GPU_MEMORY_UTILIZATION]


# --- the job label the chart's monitors produce ---------------------------------------------------

# prometheus-operator's rules: a PodMonitor's targets get job="<namespace>/<PodMonitor name>"
# unless spec.jobLabel names a pod label; a ServiceMonitor's get job=<Service name> unless
# spec.jobLabel names a Service label.
JOB_MATCHER = re.compile(r'(?<![\w.])job\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
CHART_VALUES = (None, "v2-values.yaml", "s3-servicemonitor-values.yaml")


def chart_jobs(values: str | None) -> dict[str, str]:
    """job label → the monitor that produces it, for one values file of the chart."""
    args = ["-f", str(k8s_render.CHART / "ci" / values)] if values else []
    objs = [o for _, o in k8s_render.split_documents(k8s_render.helm_template(*args))]
    jobs = {}
    for pm in (o for o in objs if o["kind"] == "PodMonitor"):
        assert "jobLabel" not in pm["spec"], pm["metadata"]["name"]
        jobs[f'{pm["metadata"]["namespace"]}/{pm["metadata"]["name"]}'] = pm["metadata"]["name"]
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        assert "jobLabel" not in sm["spec"], sm["metadata"]["name"]
        want = sm["spec"]["selector"]["matchLabels"]
        services = [o for o in objs if o["kind"] == "Service"
                    and want.items() <= o["metadata"].get("labels", {}).items()]
        assert services, f'ServiceMonitor {sm["metadata"]["name"]} selects no Service'
        jobs.update({svc["metadata"]["name"]: sm["metadata"]["name"] for svc in services})
    return jobs


def every_query() -> list[str]:
    out = [rule["expr"] for group in rules.rule_groups() for rule in group["rules"]]
    out += [q.expr for p in dashboard.PANELS for q in p.queries]
    d = json.loads(dashboard.to_json())
    for v in d["templating"]["list"]:
        q = v.get("query")
        out.append(q if isinstance(q, str) else (q or {}).get("query", ""))
    return [q for q in out if q]


def test_no_query_pins_the_job_label():
    """The rules keep `job` (aggregated by it, never filtered); the dashboard filters it only by
    its $job variable, whose All matches any job, so the chart's job names need no coordination."""
    matchers = [(expr, m.groups()) for expr in every_query() for m in JOB_MATCHER.finditer(expr)]
    assert matchers  # the dashboard's $job selectors are found: the scan is not vacuous
    assert all(m == ("=~", "$job") for _, m in matchers), [x for x in matchers if x[1] != ("=~", "$job")]
    assert not [m for rule in rules.recording_rules() + rules.alert_rules() for m in JOB_MATCHER.finditer(rule["expr"])]


def accepts(op: str, value: str, job: str) -> bool:
    """A Prometheus label matcher (regexes are anchored)."""
    return {"=": job == value, "!=": job != value, "=~": re.fullmatch(value, job) is not None,
            "!~": re.fullmatch(value, job) is None}[op]


@pytest.mark.parametrize("values", CHART_VALUES)
@pytest.mark.integration
def test_chart_monitor_jobs_pass_every_selector(values):
    """With the dashboard's variables on All, every selector keeps the series of every job the
    chart's monitors produce."""
    jobs = chart_jobs(values)
    assert jobs
    for expr in every_query():
        for op, value in (m.groups() for m in JOB_MATCHER.finditer(dashboard.prometheus_query(expr))):
            for job in jobs:
                assert accepts(op, value, job), (expr, job)


@pytest.mark.integration
def test_local_prometheus_names_jobs_like_the_chart():
    """The live tests' Prometheus labels each runtime's series with the job the chart's PodMonitor
    gives it in a cluster, so they exercise the same label values."""
    jobs = chart_jobs("v2-values.yaml")
    namespace = next(iter(jobs)).split("/")[0]
    assert set(jobs) == {prometheus.job_name(rt, namespace=namespace) for rt in names.RUNTIMES}
    assert rules_tests.JOB == prometheus.job_name(names.TORCHSERVE, namespace="ns")


@needs_promtool
@pytest.mark.integration
def test_promtool_unit_tests_pass_with_every_chart_job(tmp_path):
    jobs = sorted({job for values in CHART_VALUES for job in chart_jobs(values)})
    assert len(jobs) == 4  # two PodMonitor jobs, two ServiceMonitor (Service) jobs
    for i, job in enumerate(jobs):
        test_file = rules_tests.write(tmp_path / str(i), job=job)
        assert job in test_file.read_text()
        out = run_promtool("test", "rules", test_file.name, cwd=test_file.parent)
        assert out.returncode == 0, (job, out.stdout + out.stderr)


@needs_promtool
@pytest.mark.integration
def test_local_prometheus_config_passes_promtool(tmp_path):
    config = prometheus.write_config(tmp_path, {names.TORCHSERVE: ["127.0.0.1:8082"], names.KSERVE_NATIVE: ["127.0.0.1:8085"]})
    out = run_promtool("check", "config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = [c["job_name"] for c in yaml.safe_load(config.read_text())["scrape_configs"]]
    assert jobs == ["local/image-classifier-torchserve", "local/image-classifier-kserve-native"]


def test_load_goes_to_loopback_only():
    with pytest.raises(ValueError):
        load.run_load("http://example.com:8080", "m", [b""], count=1, seconds=1)


# --- `make monitor`: the panels rendered from a live Prometheus ----------------------------------

@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
def test_make_monitor_renders_every_panel_from_live_data(torchserve, data_dir, tmp_path, monkeypatch, capsys):
    """`make monitor` against a running TorchServe (as after `make serve`): a real Prometheus on
    a free port, a bounded load, then each dashboard panel drawn from Prometheus into one PNG.
    Every panel has series (the GPU one only where a GPU is), and the Prometheus is stopped."""
    from scripts.monitoring import monitor

    s = torchserve.settings
    for field in ("host", "inference_port", "management_port", "metrics_port", "grpc_inference_port",
                  "grpc_management_port"):
        monkeypatch.setenv(f"SERVE_{field.upper()}", str(getattr(s, field)))
    out = tmp_path / "monitor" / "dashboard.png"
    # a store that does not exist: the running TorchServe must be used, none started
    assert monitor.main(["--store", str(tmp_path / "no-store"), "--data-dir", str(data_dir), "--requests", "1500",
                         "--seconds", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"using the running TorchServe ({s.metrics_url})" in printed
    drawn = dict(re.findall(r"^  (.+): (\d+) series$", printed, re.M))
    assert list(drawn) == [p.title for p in dashboard.PANELS]
    gpu = {p.title for p in dashboard.PANELS if any(names.GPU_UTILIZATION in q.expr for q in p.queries)}
    assert len(gpu) == 1
    has_gpu = shutil.which("nvidia-smi") is not None
    empty = [title for title, n in drawn.items() if int(n) == 0 and (has_gpu or title not in gpu)]
    assert not empty, (empty, printed)
    # the request histogram against the load generator: each round trip holds the server's time,
    # so Prometheus' percentile lies at most one bucket above the client's (on a quiet machine
    # within one bucket of it; a busy one slows the client's side, not the server's); p50 lies off
    # the bucket edges
    compared = re.findall(r"^  (p\d+): load generator ([\d.]+) ms, Prometheus ([\d.]+) ms$", printed, re.M)
    assert [key for key, _, _ in compared] == list(rules.QUANTILES), printed
    edges = hm.LATENCY_BUCKETS
    for key, client, server in compared[:2]:  # p50, p95: a short load has only a few p99 samples
        client_s, server_s = float(client) / 1e3, float(server) / 1e3
        assert 0 < server_s and bisect.bisect_left(edges, server_s) <= bisect.bisect_left(edges, client_s) + 1, \
            (key, client, server)
    assert float(compared[0][2]) / 1e3 not in edges
    with Image.open(out) as img:
        rows = -(-len(dashboard.PANELS) // 3)
        assert img.format == "PNG" and img.size == (3 * 6 * 80, round(rows * 3.6 * 80))
        assert len(img.convert("RGB").getcolors(1 << 20)) > 16  # lines and text, not a blank page
    host, port = re.search(r"^monitor: Prometheus http://([0-9.]+):(\d+) ", printed, re.M).groups()
    with pytest.raises(ConnectionRefusedError):  # stopped after rendering
        socket.create_connection((host, int(port)), timeout=5).close()

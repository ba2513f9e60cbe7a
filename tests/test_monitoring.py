"""Monitoring as code without a server: the rules come from the handler's own names, pass
`promtool check rules` and promtool unit tests (every alert fires on bad input and stays quiet
on good input), the PrometheusRule carries the same groups, the chart's generated files are up to
date, the dashboard has its panels and variables, and the local prometheus.yml passes
`promtool check config`."""
from __future__ import annotations

import json
import shutil
import subprocess

import prometheus_client
import pytest
import yaml

from handlers import metrics as hm
from scripts.monitoring import dashboard, generate, load, names, prometheus, rules, rules_tests

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
def test_committed_rules_pass_promtool_check():
    out = run_promtool("check", "rules", str(generate.FILES_DIR / "rules.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules.recording_rules()) + len(rules.alert_rules())} rules found" in out.stdout


@needs_promtool
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
    assert set(cases) == {a["alert"] for a in rules.alert_rules()}
    assert all(any(c) and 0 in c for c in cases.values()), cases


@needs_promtool
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
    assert {"datasource", "namespace", "model", "version"} <= variables
    titles = [p["title"] for p in d["panels"]]
    assert titles == [p.title for p in dashboard.PANELS]
    exprs = "\n".join(t["expr"] for p in d["panels"] for t in p["targets"])
    for needed in [*rules.HANDLE_QUANTILE.values(), rules.STAGE_P95, rules.REQUEST_RATE, rules.REJECTED_RATE,
                   rules.HTTP_RATE, names.QUEUE_LATENCY_US, names.BATCH_SIZE, names.PREDICTIONS,
                   names.CPU_UTILIZATION, names.MEMORY_UTILIZATION]:
        assert needed in exprs, needed
    assert all(p["datasource"]["uid"] == "${datasource}" for p in d["panels"])


@needs_promtool
def test_local_prometheus_config_passes_promtool(tmp_path):
    config = prometheus.write_config(tmp_path, ["127.0.0.1:8082"])
    out = run_promtool("check", "config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr


def test_load_goes_to_loopback_only():
    with pytest.raises(ValueError):
        load.run_load("http://example.com:8080", "m", [b""], count=1, seconds=1)

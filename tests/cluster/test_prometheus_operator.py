"""The Prometheus operator (v0.93.0, the
release of ../shared/crds/prometheus-operator, built from its Go module by
scripts/cluster/prometheus_operator.py) turns the chart's PodMonitor and PrometheusRule into
Prometheus scrape and rule configuration.

The chart is installed with its default values (no KServe controller is needed: nothing here
looks at pods). A `Prometheus` resource in the `monitoring` namespace (the one the chart's
NetworkPolicy lets scrape the metrics port) selects the release's PodMonitors and PrometheusRules
by the labels the chart gives them (app.kubernetes.io/instance, app.kubernetes.io/component:
monitoring; values.yaml's extra `labels` are empty) in the release's namespace. What the operator
generates is read back: the gzipped configuration in the Secret `prometheus-<name>` (a scrape job
per PodMonitor endpoint, checked against the chart's metrics port and the ServingRuntime's
declared container ports), the rule files in the ConfigMap `prometheus-<name>-rulefiles-0`
(files/rules.yaml and the release's SLO objectives, passing Debian's `promtool check rules`), the
whole configuration through `promtool check config` of the Prometheus release the operator links (built here too:
Debian's 2.42 cannot parse it, a test keeps that true), and each resource's `Accepted` condition
(feature gate StatusForConfigurationResources). The StatefulSet it creates never runs here (no
node, no prometheus image): its pod stays Pending; its template is checked for the config Secret
and rules ConfigMap it mounts. A PrometheusRule with a broken expression is refused: `Accepted`
False in its status, an Event, and the PromQL parser's message in the operator's log.

A missing Go or a failed build fails these tests (never a skip).
"""
from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
import time

import pytest
import yaml

from scripts.cluster import build
from scripts.cluster import prometheus_operator as po_mod
from scripts.monitoring import slo
from tests.cluster.helpers import CHART, HELM, helm, kubectl, missing, wait_for

NS = "ic-prom"  # the release's namespace
RELEASE = "ic-prom"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PROM_NS = VALUES["networkPolicy"]["monitoringNamespace"]  # where Prometheus runs
PROMETHEUS = "ic"  # the Prometheus resource: its Secret is prometheus-ic
MONITORING_LABELS = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "monitoring"}
BROKEN_RULE = "broken-expression"
PARSE_ERROR = "could not parse expression: 1:42: parse error: unclosed left parenthesis"


def get(plane, kind: str, name: str, ns: str = PROM_NS, check: bool = True) -> dict | None:
    proc = kubectl(plane, "get", kind, name, "-n", ns, "-o", "json", check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def rendered() -> list[dict]:
    out = subprocess.run([str(HELM), "template", RELEASE, str(CHART), "--set", f"namespace.name={NS}"],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def prometheus_resource() -> dict:
    selector = {"matchLabels": MONITORING_LABELS}
    release_ns = {"matchLabels": {"kubernetes.io/metadata.name": NS}}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
            "metadata": {"name": PROMETHEUS, "namespace": PROM_NS},
            "spec": {"podMonitorSelector": selector, "podMonitorNamespaceSelector": release_ns,
                     "ruleSelector": selector, "ruleNamespaceSelector": release_ns}}


def conditions(plane, kind: str, name: str) -> list[dict]:
    """`Accepted` conditions of a PodMonitor/PrometheusRule, one per Prometheus selecting it."""
    status = (get(plane, kind, name, NS) or {}).get("status") or {}
    return [c for b in status.get("bindings") or [] if b["name"] == PROMETHEUS
            for c in b.get("conditions") or [] if c["type"] == "Accepted"]


@pytest.fixture(scope="module")
def operator(plane, crds):
    try:
        t0 = time.monotonic()
        po_mod.OPERATOR.build()  # a BuildError fails the tests: the cached binary is the product
        built = time.monotonic() - t0
    except build.BuildError as err:
        missing(str(err))
    op = po_mod.PrometheusOperator(plane, namespaces=[NS, PROM_NS])
    op.start()
    print(f"\nprometheus-operator: build/cache {built:.1f} s, start to /healthz "
          f"{op.start_seconds:.2f} s, rss {op.memory() // 2**20} MiB")
    try:
        yield op
    finally:
        print(f"\nprometheus-operator: rss at the end {op.memory() // 2**20} MiB")
        op.stop()
        assert not op.running()


@pytest.fixture(scope="module")
def release(plane, operator):
    out = helm(plane, "install", RELEASE, str(CHART), "--namespace", "default",
               "--set", f"namespace.name={NS}")
    assert "STATUS: deployed" in out.stdout, out.stdout
    kubectl(plane, "create", "namespace", PROM_NS)
    t0 = time.monotonic()
    kubectl(plane, "apply", "--server-side", "-f", "-", stdin=json.dumps(prometheus_resource()))
    wait_for(f"Secret {PROM_NS}/prometheus-{PROMETHEUS}",
             lambda: get(plane, "secret", f"prometheus-{PROMETHEUS}", check=False), every=0.2)
    print(f"\nPrometheus resource -> config Secret: {time.monotonic() - t0:.2f} s")


def generated_config(plane) -> dict:
    secret = get(plane, "secret", f"prometheus-{PROMETHEUS}")
    return yaml.safe_load(gzip.decompress(base64.b64decode(secret["data"]["prometheus.yaml.gz"])))


def rule_files(plane) -> dict[str, str]:
    return wait_for("rules ConfigMap", lambda: get(plane, "configmap", f"prometheus-{PROMETHEUS}-rulefiles-0",
                                                    check=False))["data"]


def chart_rule_file(files: dict[str, str]) -> str:
    ours = [name for name in files if name.startswith(f"{NS}-image-classifier-")]
    assert len(ours) == 1, sorted(files)
    return ours[0]


def scrape_job(config: dict, monitor: str) -> dict | None:
    return next((j for j in config.get("scrape_configs") or []
                 if j["job_name"] == f"podMonitor/{NS}/{monitor}/0"), None)


@pytest.mark.integration
def test_podmonitor_becomes_a_pod_scrape_job_on_the_metrics_port(plane, release):
    objs = rendered()
    monitors = [o for o in objs if o["kind"] == "PodMonitor"]
    assert [m["metadata"]["name"] for m in monitors] == ["image-classifier-torchserve"]
    monitor = monitors[0]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    job = wait_for("the PodMonitor's scrape job",
                   lambda: scrape_job(generated_config(plane), monitor["metadata"]["name"]))
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [NS]}}]
    assert job["metrics_path"] == endpoint["path"] == "/metrics"
    assert job["scrape_interval"] == endpoint["interval"] == VALUES["monitoring"]["podMonitor"]["interval"]
    relabel = job["relabel_configs"]
    # the pod selector: one `keep` per matchLabels entry
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        assert {"action": "keep", "regex": f"({value});true",
                "source_labels": [f"__meta_kubernetes_pod_label_{name}",
                                  f"__meta_kubernetes_pod_labelpresent_{name}"]} in relabel, name
    # the port: the pod role makes one target per declared container port and the job keeps the
    # one numbered portNumber, so the ServingRuntime must declare the metrics port (Standard mode
    # does; Knative mode allows one port) or Prometheus scrapes nothing
    port_number = "__meta_kubernetes_pod_container_port_number"
    port_keep = [r for r in relabel if port_number in r.get("source_labels", [])]
    assert port_keep == [{"action": "keep", "regex": endpoint["portNumber"], "source_labels": [port_number]}]
    assert endpoint["portNumber"] == VALUES["ports"]["torchserve"]["metrics"]
    runtime = next(o for o in objs if o["kind"] == "ServingRuntime" and "torchserve" in o["metadata"]["name"])
    declared = {p["containerPort"]: p["name"]
                for c in runtime["spec"]["containers"] for p in c.get("ports", [])}
    assert declared.get(endpoint["portNumber"]) == "metrics", declared
    accepted = wait_for("the PodMonitor's Accepted condition",
                        lambda: conditions(plane, "podmonitor", monitor["metadata"]["name"]))
    assert accepted[0]["status"] == "True", accepted


@pytest.mark.integration
def test_prometheusrule_lands_in_the_rules_configmap_and_passes_promtool(plane, release, tmp_path):
    files = rule_files(plane)
    name = chart_rule_file(files)
    chart_rules = yaml.safe_load((CHART / "files" / "rules.yaml").read_text())
    groups = yaml.safe_load(files[name])["groups"]
    # the generated rules, then the release's SLO objectives per model (scripts/monitoring/slo.py)
    assert groups[:-1] == chart_rules["groups"]
    assert groups[-1]["name"] == slo.PARAMETER_GROUP
    assert {r["labels"]["ModelName"] for r in groups[-1]["rules"]} == {"fashion-mnist", "imagenet"}
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool missing: `bash scripts/setup.sh` installs Debian's prometheus package")
    (tmp_path / name).write_text(files[name])
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in proc.stdout
    accepted = wait_for("the PrometheusRule's Accepted condition",
                        lambda: conditions(plane, "prometheusrule", "image-classifier"))
    assert accepted[0]["status"] == "True", accepted


@pytest.mark.integration
def test_whole_generated_config_passes_promtool_check_config(plane, release, tmp_path):
    """With the rule files where the pod mounts them (/etc/prometheus/rules/<ConfigMap>/) moved
    here and the variables the config reloader substitutes in the pod ($(SHARD), $(POD_NAME))
    given their values for the first pod. Debian's promtool (2.42) cannot parse it at all."""
    config = generated_config(plane)
    rules_dir = tmp_path / "rules" / f"prometheus-{PROMETHEUS}-rulefiles-0"
    rules_dir.mkdir(parents=True)
    files = rule_files(plane)
    for name, text in files.items():
        (rules_dir / name).write_text(text)
    text = (yaml.safe_dump(config, sort_keys=False).replace("/etc/prometheus/rules/", f"{tmp_path}/rules/")
            .replace("$(SHARD)", "0").replace("$(POD_NAME)", f"prometheus-{PROMETHEUS}-0"))
    assert "/etc/prometheus" not in text and "$(" not in text, text  # nothing else only a pod has
    path = tmp_path / "prometheus.yaml"
    path.write_text(text)
    try:
        promtool = po_mod.promtool_binary().build()
    except build.BuildError as err:
        missing(str(err))
    proc = subprocess.run([str(promtool), "check", "config", str(path)], capture_output=True, text=True)
    print(f"\npromtool ({po_mod.PROMETHEUS_MODULE}@{po_mod.promtool_binary().version}): "
          f"{proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule_count = sum(len(g["rules"]) for t in files.values() for g in yaml.safe_load(t)["groups"])
    assert f"SUCCESS: {rule_count} rules found" in proc.stdout
    debian = shutil.which("promtool")
    if debian:
        proc = subprocess.run([debian, "check", "config", str(path)], capture_output=True, text=True)
        assert proc.returncode == 1 and "field kubernetes_sd_configs not found" in proc.stdout + proc.stderr


@pytest.mark.integration
def test_statefulset_mounts_the_generated_config_and_does_not_run(plane, release):
    sts = wait_for("StatefulSet", lambda: get(plane, "statefulset", f"prometheus-{PROMETHEUS}", check=False))
    assert sts["metadata"]["ownerReferences"][0]["kind"] == "Prometheus"
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    config_maps = {v["configMap"]["name"] for v in volumes if "configMap" in v}
    assert f"prometheus-{PROMETHEUS}" in secrets, volumes
    assert f"prometheus-{PROMETHEUS}-rulefiles-0" in config_maps, volumes
    pod = wait_for("the StatefulSet's pod",
                   lambda: get(plane, "pod", f"prometheus-{PROMETHEUS}-0", check=False))
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")  # no node here


@pytest.mark.integration
def test_broken_rule_expression_is_refused_with_the_parser_message(plane, release, operator):
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": BROKEN_RULE, "namespace": NS, "labels": MONITORING_LABELS},
            "spec": {"groups": [{"name": "broken", "rules": [
                {"record": "broken:rate5m", "expr": "sum(rate(ts_inference_requests_total[5m])"}]}]}}
    kubectl(plane, "apply", "--server-side", "-f", "-", stdin=json.dumps(rule))  # the CRD takes it
    try:
        condition = wait_for("the broken rule's Accepted condition",
                             lambda: conditions(plane, "prometheusrule", BROKEN_RULE))[0]
        assert (condition["status"], condition["reason"], condition["message"]) == \
            ("False", "InvalidConfiguration", "invalid rule")
        events = json.loads(kubectl(plane, "get", "events", "-n", NS, "-o", "json",
                                    f"--field-selector=involvedObject.name={BROKEN_RULE}").stdout)["items"]
        assert any(e["reason"] == "InvalidConfiguration" and "was rejected due to invalid configuration"
                   in e["message"] for e in events), events
        # the parser's own message is in the log only
        logged = [json.loads(line) for line in operator.log_file.read_text().splitlines()
                  if BROKEN_RULE in line]
        errors = [entry["err"] for entry in logged if entry.get("msg") == "invalid rule"]
        print(f"\noperator: condition {condition['reason']}: {condition['message']!r}; log: {errors[0]!r}")
        assert any(PARSE_ERROR in err and '"broken:rate5m"' in err for err in errors), logged
        files = rule_files(plane)
        assert not any(name.startswith(f"{NS}-{BROKEN_RULE}-") for name in files)
        chart_rule_file(files)  # the chart's rules are still there
    finally:
        kubectl(plane, "delete", "prometheusrule", BROKEN_RULE, "-n", NS)

"""promtool unit tests for rules.py, generated from the same names: for every alert one case
where it fires and one where it stays quiet, plus checks of the recording rules' values.
`write(dir)` writes rules.yaml and rules_test.yaml there; run `promtool test rules` on the latter."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from scripts.monitoring import names as n
from scripts.monitoring import rules as r
from scripts.monitoring.prometheus import job_name

STEPS = 80  # samples per series at 15 s: 20 minutes
JOB = job_name(n.TORCHSERVE, namespace="ns")  # as prometheus-operator names the chart's PodMonitor's job
TARGET = {n.NAMESPACE: "ns", n.JOB: JOB}


def _labels(d: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def model(name: str, instance: str = "pod-a:8082") -> dict:
    return {**TARGET, n.INSTANCE: instance, n.MODEL: name, n.VERSION: "1.0", n.LEVEL: "Model", n.HOSTNAME: "pod-a"}


def host(instance: str) -> dict:
    return {**TARGET, n.INSTANCE: instance, n.LEVEL: "Host", n.HOSTNAME: instance.split(":")[0]}


def series(metric: str, labels: dict, values: str) -> dict:
    return {"series": metric + _labels(labels), "values": values}


def grow(step: float) -> str:
    return f"0+{step}x{STEPS}"


def const(v: float) -> str:
    return f"{v}+0x{STEPS}"


def handle_buckets(name: str, le_all: str) -> list[dict]:
    """Ten batches a step, all in the bucket ending at `le_all` (buckets 0.25, 1, +Inf)."""
    out = []
    for le in ("0.25", "1", "+Inf"):
        inside = le == "+Inf" or float(le) >= float(le_all)
        out.append(series(f"{n.STAGE_SECONDS}_bucket", {**model(name), n.STAGE: n.HANDLE_STAGE, "le": le},
                          grow(10) if inside else const(0)))
    return out


def keep(labels: dict, keys) -> dict:
    return {k: labels[k] for k in keys}


def _alert(name: str) -> dict:
    return next(a for a in r.alert_rules() if a["alert"] == name)


def expected(name: str, labels: dict) -> dict:
    a = _alert(name)
    render = lambda s: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], s)  # noqa: E731
    return {"exp_labels": {**labels, **a["labels"]},
            "exp_annotations": {k: render(v) for k, v in a["annotations"].items()}}


def case(name: str, inputs: list[dict], fires: list[dict], at: str) -> dict:
    return {"interval": "15s", "input_series": inputs,
            "alert_rule_test": [{"eval_time": at, "alertname": name,
                                 "exp_alerts": [expected(name, f) for f in fires]}]}


def alert_cases() -> dict[str, tuple[list[dict], list[dict], str]]:
    """alert → (inputs where it fires for one series, the labels it fires with, eval time);
    `quiet` inputs are the same without the offending series."""
    slow = model("slow")
    bad, good = model("bad"), model("good")
    idle, busy = model("idle"), model("busy")
    flaky, stable = model("flaky"), model("stable")
    a, b = host("pod-a:8082"), host("pod-b:8082")
    up = lambda h, v: series("up", keep(h, r.BY_TARGET), const(v))  # noqa: E731
    return {
        "ImageClassifierHighLatency": (
            handle_buckets("slow", "1"), handle_buckets("fast", "0.25"), keep(slow, r.BY_MODEL), "10m"),
        "ImageClassifierInputsRejected": (
            [series(n.PREDICTIONS, {**bad, n.CLASS: "Bag"}, grow(10)),
             series(n.REJECTED, {**bad, n.REASON: "invalid_image"}, grow(5))],
            [series(n.PREDICTIONS, {**good, n.CLASS: "Bag"}, grow(10)),
             series(n.REJECTED, {**good, n.REASON: "invalid_image"}, const(0))],
            keep(bad, r.BY_MODEL), "10m"),
        "TorchServeHighErrorRatio": (
            [series(n.HTTP_STATUS_COUNTERS["2xx"], a, grow(10)), series(n.HTTP_STATUS_COUNTERS["4xx"], a, grow(3)),
             series(n.HTTP_STATUS_COUNTERS["5xx"], a, grow(1))],
            [series(n.HTTP_STATUS_COUNTERS["2xx"], b, grow(10)), series(n.HTTP_STATUS_COUNTERS["4xx"], b, const(0))],
            keep(a, r.BY_TARGET), "10m"),
        "ImageClassifierNoTraffic": (
            [series(n.MODEL_LOAD_SECONDS, idle, const(0.5)),
             series(f"{n.STAGE_SECONDS}_count", {**idle, n.STAGE: n.HANDLE_STAGE}, const(3))],
            [series(n.MODEL_LOAD_SECONDS, busy, const(0.5)),
             series(f"{n.STAGE_SECONDS}_count", {**busy, n.STAGE: n.HANDLE_STAGE}, grow(2))],
            keep(idle, r.BY_MODEL), "15m"),
        # pod-a served a model, then its scrapes fail; pod-b (not ours: it never exported a
        # model) is down too, pod-c is ours and up
        "ImageClassifierTargetDown": (
            [series("up", keep(a, r.BY_TARGET), f"1+0x3 0+0x{STEPS - 4}"),
             series(n.MODEL_LOAD_SECONDS, model("m", "pod-a:8082"), f"0.5+0x3 _x{STEPS - 4}")],
            [up(b, 0), up(host("pod-c:8082"), 1), series(n.MODEL_LOAD_SECONDS, model("m", "pod-c:8082"), const(0.5))],
            keep(a, r.BY_TARGET), "5m"),
        # TorchServe on pod-a exports its host gauges but no model loaded; pod-b has one
        "ImageClassifierNoModelLoaded": (
            [series(n.CPU_UTILIZATION, a, const(50))],
            [series(n.CPU_UTILIZATION, b, const(50)), series(n.MODEL_LOAD_SECONDS, model("m", "pod-b:8082"), const(0.5))],
            keep(a, r.BY_TARGET), "5m"),
        "ImageClassifierWorkerRestarted": (
            [series(n.MODEL_LOAD_SECONDS, flaky, f"0.5+0x10 0.7+0x{STEPS - 11}")],
            [series(n.MODEL_LOAD_SECONDS, stable, const(0.5))], flaky, "5m"),
    }


def recording_cases() -> list[dict]:
    m = model("m")
    inputs = handle_buckets("m", "0.25") + [
        series(n.PREDICTIONS, {**m, n.CLASS: "Bag"}, grow(30)),
        series(n.REJECTED, {**m, n.REASON: "invalid_image"}, grow(15)),
        series(n.REJECTED, {**m, n.REASON: "too_large"}, grow(15)),
    ]
    by_model = keep(m, r.BY_MODEL)
    sample = lambda rule, value, **extra: {"labels": rule + _labels({**by_model, **extra}), "value": value}  # noqa: E731
    return [{"interval": "15s", "input_series": inputs, "promql_expr_test": [
        {"expr": r.HANDLE_QUANTILE["p50"], "eval_time": "5m", "exp_samples": [sample(r.HANDLE_QUANTILE["p50"], 0.125)]},
        {"expr": r.REJECTED_RATIO, "eval_time": "5m", "exp_samples": [sample(r.REJECTED_RATIO, 0.5)]},
        {"expr": r.IMAGE_RATE, "eval_time": "5m", "exp_samples": [sample(r.IMAGE_RATE, 4.0)]},
        {"expr": r.REJECTED_RATE, "eval_time": "5m", "exp_samples": [
            sample(r.REJECTED_RATE, 1.0, **{n.REASON: "invalid_image"}),
            sample(r.REJECTED_RATE, 1.0, **{n.REASON: "too_large"})]},
    ]}]


def with_job(obj, job: str):
    """The same tests with the job label JOB set to `job` everywhere (input series, expected
    labels, rendered annotations): the rules must not care which job scraped the targets."""
    if isinstance(obj, dict):
        return {k: with_job(v, job) for k, v in obj.items()}
    if isinstance(obj, list):
        return [with_job(x, job) for x in obj]
    return obj.replace(JOB, job) if isinstance(obj, str) else obj


def unit_tests(rule_file: str = "rules.yaml", job: str = JOB) -> dict:
    tests = []
    for name, (bad, good, fires, at) in alert_cases().items():
        tests.append(case(name, bad + good, [fires], at))  # fires for the bad series only
        tests.append(case(name, good, [], at))  # quiet without it
    out = {"rule_files": [rule_file], "evaluation_interval": "15s", "tests": tests + recording_cases()}
    return out if job == JOB else with_job(out, job)


def write(directory: Path, job: str = JOB) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yaml").write_text(yaml.safe_dump(r.rules_file(), sort_keys=False, width=200))
    test = directory / "rules_test.yaml"
    test.write_text(yaml.safe_dump(unit_tests(job=job), sort_keys=False, width=200))
    return test

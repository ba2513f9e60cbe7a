"""promtool unit tests for rules.py, generated from the same names: for every alert one case
where it fires and one where it stays quiet, plus checks of the recording rules' values.
`write(dir)` writes rules.yaml and rules_test.yaml there; run `promtool test rules` on the latter."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from scripts.monitoring import names as n
from scripts.monitoring import rules as r
from scripts.monitoring import slo
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
    return next(a for a in r.every_alert() if a["alert"] == name)


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


def counter(per_minute: float, minutes: int, stop: int | None = None, after: float | None = None) -> str:
    """A counter's samples, one a minute: growing `per_minute`, from minute `stop` on `after`."""
    if stop is None:
        return f"0+{per_minute}x{minutes}"
    return f"0+{per_minute}x{stop} {round(per_minute * stop + after, 6)}+{after}x{minutes - stop - 1}"


def requests(name: str, per_minute: dict[str, float], minutes: int, stop: int | None = None) -> list[dict]:
    """A model's request histogram: `per_minute` counts by status class ("2xx", "5xx") and
    "slow" (2xx answers above the SLO's latency threshold). From minute `stop` on, the bad ones
    (5xx and slow) stop and good answers take their place."""
    m = {**model(name), n.PROTOCOL: "rest"}
    slow = per_minute.get("slow", 0)
    out = []
    for code in ("2xx", "5xx"):
        count = per_minute.get(code, 0)
        if not count:
            continue
        at = {**m, n.CODE: code}
        total_after = 0 if code == "5xx" else count + per_minute.get("5xx", 0)
        fast, fast_after = (count - slow, total_after) if code == "2xx" else (count, 0)
        out += [series(f"{n.REQUEST_SECONDS}_count", at, counter(count, minutes, stop, total_after)),
                series(f"{n.REQUEST_SECONDS}_bucket", {**at, "le": slo.Objectives().latency_threshold},
                       counter(fast, minutes, stop, fast_after)),
                series(f"{n.REQUEST_SECONDS}_bucket", {**at, "le": "+Inf"}, counter(count, minutes, stop, total_after))]
    return out


# SLO scenarios at 60 requests a minute: (burn rate, minutes it lasts or None, eval time, alerts
# expected). Availability's budget is 0.1 % of requests, latency's 1 % (Objectives' defaults); the
# share of bad requests is the burn rate times the budget. A fast burn (20x) pages; a medium one
# (8x) pages through the 6 h / 30 min pair only; a slow one (2x) opens a ticket and pages nobody;
# half the budget raises nothing; a fast burn that stopped 35 minutes ago no longer pages (its
# short windows are clean) but still holds its ticket (its 6 h window is not). Every burn above
# 1x also meets the ticket's condition: Alertmanager's inhibition keeps the ticket quiet while
# the page fires.
SLO_SCENARIOS = {"fast": (20, None, "30m", {"page", "ticket"}), "medium": (8, None, "30m", {"page", "ticket"}),
                 "slow": (2, None, "30m", {"ticket"}), "within": (0.5, None, "30m", set()),
                 "stopped": (20, 20, "55m", {"ticket"})}
SLO_MINUTES = 60


def slo_cases() -> list[dict]:
    budget = {"availability": 1 - slo.Objectives().availability, "latency": 1 - slo.Objectives().latency}
    out = []
    for kind in slo.SLOS:
        for scenario, (burn, stop, at, fire) in SLO_SCENARIOS.items():
            name = f"{kind}-{scenario}"
            bad = round(60 * burn * budget[kind], 6)
            per_minute = {"2xx": 60 - bad, "5xx": bad} if kind == "availability" else {"2xx": 60, "slow": bad}
            labels = keep(model(name), r.BY_MODEL)
            tests = [{"eval_time": at, "alertname": alert,
                      "exp_alerts": [expected(alert, labels)] if severity in fire else []}
                     for (k, severity), alert in slo.ALERTS.items() if k == kind]
            out.append({"interval": "1m", "input_series": requests(name, per_minute, SLO_MINUTES, stop),
                        "alert_rule_test": tests})
    return out


SLO_MODELS = tuple(f"{kind}-{scenario}" for kind in slo.SLOS for scenario in SLO_SCENARIOS) + ("scaled",)


def scaling_cases() -> list[dict]:
    """The KEDA option's queries over two pods of one model, each answering 3 requests a second
    that spend 1.1 s in all: 6 requests/s, and 2.2 requests in progress on average (Little's law)."""
    inputs = []
    for pod in ("pod-a:8082", "pod-b:8082"):
        m = {**model("scaled", pod), n.PROTOCOL: "rest", n.CODE: "2xx"}
        inputs += [series(f"{n.REQUEST_SECONDS}_count", m, "0+180x20"),  # 3 a second, one sample a minute
                   series(f"{n.REQUEST_SECONDS}_sum", m, "0+66x20")]  # 66 s of requests a minute
    queries = [(r.scaling_query("rps", "ns", "scaled"), 6.0), (r.scaling_query("concurrency", "ns", "scaled"), 2.2)]
    return [{"interval": "1m", "input_series": inputs, "promql_expr_test": [
        {"expr": q, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": v}]} for q, v in queries]}]


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
    out = {"rule_files": [rule_file], "evaluation_interval": "15s",
           "tests": tests + recording_cases() + slo_cases() + scaling_cases()}
    return out if job == JOB else with_job(out, job)


def write(directory: Path, job: str = JOB) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rules = r.rules_file(namespace=TARGET[n.NAMESPACE], models=SLO_MODELS)
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False, width=200))
    test = directory / "rules_test.yaml"
    test.write_text(yaml.safe_dump(unit_tests(job=job), sort_keys=False, width=200))
    return test

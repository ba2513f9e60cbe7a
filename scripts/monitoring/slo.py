"""Service level objectives per model, read from the request histogram (REQUEST_SECONDS, the
same on both runtimes), with the multi-window, multi-burn-rate alerts of the SRE workbook
(chapter 5, "Alerting on SLOs"), for a 30-day budget:

    page:   the budget burns 14.4x too fast over 1 h and 5 min (2 % of it in an hour), or 6x over
            6 h and 30 min (5 % in six hours)
    ticket: it burns faster than it lasts (1x) over 3 d and 6 h (10 % in three days)

The long window says the burn is real, the short one that it is still going on (the alert stops
soon after the burn does). Availability: the share of requests not answered 5xx. Latency: the
share answered within a threshold that is one of the histogram's bucket edges.

The objectives are series, not numbers in the expressions: `parameter_group()` records them per
(namespace, model), the chart renders that group from its values (`slo:`), and the alerts join
on it; the rest of the rules stays one generated file for every release."""
from __future__ import annotations

from dataclasses import dataclass

from handlers import metrics as hm
from scripts.monitoring import names as n

GROUP, PARAMETER_GROUP = "image-classifier.slo", "image-classifier.slo-parameters"
# the SRE workbook's pairs: (severity, long window, short window, burn rate)
BURNS = (("page", "1h", "5m", 14.4), ("page", "6h", "30m", 6), ("ticket", "3d", "6h", 1))
WINDOWS = ("5m", "30m", "1h", "6h", "3d")
SLOS = ("availability", "latency")

# Parameter series (one per namespace and model; the chart writes them from its values).
OBJECTIVE = {slo: f"image_classifier:slo_{slo}:objective" for slo in SLOS}  # target share of good requests
LATENCY_THRESHOLD = "image_classifier:slo_latency:threshold_seconds"  # its `le` label is the bucket edge
# The names the chart writes its parameter group with (generated into files/slo-parameters.yaml)
PARAMETER_NAMES = {"group": PARAMETER_GROUP, "availability": OBJECTIVE["availability"],
                   "latency": OBJECTIVE["latency"], "threshold": LATENCY_THRESHOLD}
# Share of bad requests (5xx; slower than the threshold) per model, over each window.
BAD_RATIO = {slo: {w: f"model:image_classifier_slo_{slo}_bad:ratio_rate{w}" for w in WINDOWS} for slo in SLOS}
ALERTS = {("availability", "page"): "ImageClassifierAvailabilityBudgetBurn",
          ("availability", "ticket"): "ImageClassifierAvailabilityBudgetBurnSlow",
          ("latency", "page"): "ImageClassifierLatencyBudgetBurn",
          ("latency", "ticket"): "ImageClassifierLatencyBudgetBurnSlow"}
PARAMETER_KEYS = (n.NAMESPACE, n.MODEL)  # what the alerts join the parameters on


def bucket_edges() -> tuple[str, ...]:
    """The latency thresholds an SLO can use: the histogram's bucket edges as its `le` labels
    (prometheus_client's spelling), except the whole seconds, which Prometheus 3 respells
    ("1.0" becomes "1") so that a label match would depend on the server's version."""
    return tuple(str(e) for e in hm.LATENCY_BUCKETS if e != int(e))


@dataclass(frozen=True)
class Objectives:
    """The chart's `slo:` values; tests/monitoring/test_slo.py checks that the defaults agree."""

    availability: float = 0.999  # share of requests not answered 5xx
    latency: float = 0.99  # share of requests answered within latency_threshold
    latency_threshold: str = "0.25"  # seconds, one of bucket_edges()

    def __post_init__(self):
        if self.latency_threshold not in bucket_edges():
            raise ValueError(f"latency threshold {self.latency_threshold!r} is not a bucket edge: {bucket_edges()}")
        for slo in SLOS:
            if not 0 < getattr(self, slo) < 1:
                raise ValueError(f"{slo} objective must lie between 0 and 1, not {getattr(self, slo)}")


def parameter_group(namespace: str, models, o: Objectives = Objectives()) -> dict:
    """The objectives as series, per model (what the chart renders into its PrometheusRule)."""
    rules = []
    for model in models:
        at = {n.NAMESPACE: namespace, n.MODEL: model}
        rules += [{"record": OBJECTIVE["availability"], "expr": f"vector({o.availability})", "labels": at},
                  {"record": OBJECTIVE["latency"], "expr": f"vector({o.latency})", "labels": at},
                  {"record": LATENCY_THRESHOLD, "expr": f"vector({o.latency_threshold})",
                   "labels": {**at, "le": o.latency_threshold}}]
    return {"name": PARAMETER_GROUP, "rules": rules}


def recording_rules() -> list[dict]:
    by = n.by(n.BY_MODEL)
    count, bucket = f"{n.REQUEST_SECONDS}_count", f"{n.REQUEST_SECONDS}_bucket"
    out = []
    for w in WINDOWS:
        total = f"sum by ({by}) (rate({count}[{w}]))"
        # `or ... * 0`: a model that never answered 5xx has no 5xx series, and its ratio is 0
        errors = f'(sum by ({by}) (rate({count}{{{n.CODE}="5xx"}}[{w}])) or {total} * 0)'
        fast = f"sum by ({by}) (rate({bucket}[{w}]) and on ({n.NAMESPACE}, {n.MODEL}, le) {LATENCY_THRESHOLD})"
        out += [{"record": BAD_RATIO["availability"][w], "expr": f"{errors} / {total}"},
                {"record": BAD_RATIO["latency"][w], "expr": f"1 - {fast} / {total}"}]
    return out


def burn_condition(slo: str, window: str, burn: float) -> str:
    keys = n.by(PARAMETER_KEYS)
    return f"{BAD_RATIO[slo][window]} > on ({keys}) group_left () ({burn} * (1 - {OBJECTIVE[slo]}))"


def alert_rules() -> list[dict]:
    model = f"{{{{ $labels.{n.MODEL} }}}} {{{{ $labels.{n.VERSION} }}}}"
    what = {"availability": "5xx answers", "latency": "answers slower than the latency threshold"}
    out = []
    for (slo, severity), name in ALERTS.items():
        pairs = [(long, short, burn) for sev, long, short, burn in BURNS if sev == severity]
        expr = " or ".join(f"({burn_condition(slo, long, burn)} and {burn_condition(slo, short, burn)})"
                           for long, short, burn in pairs)
        windows = ", ".join(f"{burn}x over {long} and {short}" for long, short, burn in pairs)
        out.append({"alert": name, "expr": expr, "labels": {"severity": severity, "slo": slo},
                    "annotations": {"summary": f"{model}: {what[slo]} burn the {slo} SLO's error budget ({windows})"}})
    return out


def group() -> dict:
    return {"name": GROUP, "rules": recording_rules() + alert_rules()}

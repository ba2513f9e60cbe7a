"""The Grafana dashboard, built in code with grafana-foundation-sdk. PANELS is the one list of
panels and their PromQL; `build()` turns it into a dashboard with namespace/model/version
variables, `prometheus_query()` resolves the variables so tests and the PNG renderer can run the
very same queries against a real Prometheus (no Grafana server runs here)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import timeseries as gt
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from scripts.monitoring import names as n
from scripts.monitoring import rules as r

UID = "image-classifier"
TITLE = "Image classifier (TorchServe / KServe)"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# selectors: handler metrics, TorchServe frontend metrics (model_version is "default" there:
# the frontend does not know the archive's version), host-level metrics
SEL = f'{n.NAMESPACE}=~"$namespace", {n.MODEL}=~"$model", {n.VERSION}=~"$version"'
TS_SEL = f'{n.NAMESPACE}=~"$namespace", {n.TS_MODEL}=~"$model"'
NS_SEL = f'{n.NAMESPACE}=~"$namespace"'
M = f"{{{{{n.MODEL}}}}} {{{{{n.VERSION}}}}}"  # legend: "{{ModelName}} {{ModelVersion}}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Request rate by model", "reqps", (
        Query(f"sum by ({n.TS_MODEL}, {n.TS_VERSION}) ({r.REQUEST_RATE}{{{TS_SEL}}})", f"{{{{{n.TS_MODEL}}}}} requests (TorchServe)"),
        Query(f"sum by ({n.MODEL}, {n.VERSION}) ({r.IMAGE_RATE}{{{SEL}}})", f"{M} images"),
    ), "TorchServe's inference requests and the images the handler saw, per second"),
    PanelSpec("Error ratio by HTTP status", "percentunit", (
        Query(f'sum by (status) ({r.HTTP_RATE}{{{NS_SEL}, status!="2xx"}}) / ignoring(status) group_left '
              f"sum ({r.HTTP_RATE}{{{NS_SEL}}})", "{{status}}"),
    ), "Requests4XX/5XX over all HTTP calls TorchServe answered"),
    PanelSpec("Rejected inputs by reason", "percentunit", (
        Query(f"sum by ({n.MODEL}, {n.VERSION}, {n.REASON}) ({r.REJECTED_RATE}{{{SEL}}}) / ignoring({n.REASON}) group_left "
              f"sum by ({n.MODEL}, {n.VERSION}) ({r.IMAGE_RATE}{{{SEL}}})", f"{M} {{{{{n.REASON}}}}}"),
    ), "image_handler_rejected_total over all images, by reason"),
    PanelSpec("Handler latency p50 / p95 / p99", "s", tuple(
        Query(f"{rule}{{{SEL}}}", f"{M} {key}") for key, rule in r.HANDLE_QUANTILE.items()
    ), 'image_handler_stage_seconds{stage="handle"}: one batch through the handler'),
    PanelSpec("Stage p95", "s", (
        Query(f'{r.STAGE_P95}{{{SEL}, {n.STAGE}!="{n.HANDLE_STAGE}"}}', f"{M} {{{{{n.STAGE}}}}}"),
    )),
    PanelSpec("Queue and frontend latency (mean per request)", "µs", (
        Query(f"sum by ({n.TS_MODEL}) (rate({n.QUEUE_LATENCY_US}{{{TS_SEL}}}[{RATE}])) / "
              f"sum by ({n.TS_MODEL}) (rate({n.REQUESTS_TOTAL}{{{TS_SEL}}}[{RATE}]))", f"{{{{{n.TS_MODEL}}}}} queue"),
        Query(f"sum by ({n.TS_MODEL}) (rate({n.LATENCY_US}{{{TS_SEL}}}[{RATE}])) / "
              f"sum by ({n.TS_MODEL}) (rate({n.REQUESTS_TOTAL}{{{TS_SEL}}}[{RATE}]))", f"{{{{{n.TS_MODEL}}}}} total"),
    ), "TorchServe keeps running totals only: mean = rate(total µs) / rate(requests)"),
    PanelSpec("Batch size (mean images per forward pass)", "short", (
        Query(f"sum by ({n.MODEL}, {n.VERSION}) (rate({n.BATCH_SIZE}_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({n.MODEL}, {n.VERSION}) (rate({n.BATCH_SIZE}_count{{{SEL}}}[{RATE}]))", M),
    )),
    PanelSpec("Predictions by class", "ops", (
        Query(f"sum by ({n.MODEL}, {n.CLASS}) (rate({n.PREDICTIONS}{{{SEL}}}[{RATE}]))", f"{{{{{n.MODEL}}}}} {{{{{n.CLASS}}}}}"),
    )),
    PanelSpec("CPU and memory (host, TorchServe)", "percent", (
        Query(f"max by ({n.INSTANCE}) ({n.CPU_UTILIZATION}{{{NS_SEL}}})", "{{instance}} CPU"),
        Query(f"max by ({n.INSTANCE}) ({n.MEMORY_UTILIZATION}{{{NS_SEL}}})", "{{instance}} memory"),
    )),
)


def _variable(name: str, label: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).datasource(DS).query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))


def build() -> dm.Dashboard:
    d = (gd.Dashboard(TITLE).uid(UID).tags(["image-classifier", "torchserve", "kserve"])
         .refresh("30s").time("now-1h", "now").timezone("browser")
         .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(_variable("namespace", "Namespace", f"label_values(up, {n.NAMESPACE})"))
         .with_variable(_variable("model", "Model", f"label_values({n.MODEL_LOAD_SECONDS}{{{NS_SEL}}}, {n.MODEL})"))
         .with_variable(_variable("version", "Version",
                                  f'label_values({n.MODEL_LOAD_SECONDS}{{{NS_SEL}, {n.MODEL}=~"$model"}}, {n.VERSION})')))
    for spec in PANELS:
        panel = gt.Panel().title(spec.title).unit(spec.unit).datasource(DS).height(8).span(12)
        if spec.description:
            panel = panel.description(spec.description)
        for i, q in enumerate(spec.queries):
            panel = panel.with_target(gp.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DS))
        d = d.with_panel(panel)
    return d.build()


def to_json() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def prometheus_query(expr: str, rate_interval: str = "1m") -> str:
    """A panel query with the dashboard's variables resolved to "everything"."""
    for var in ("namespace", "model", "version"):
        expr = expr.replace(f"${var}", ".*")
    return expr.replace(RATE, rate_interval)

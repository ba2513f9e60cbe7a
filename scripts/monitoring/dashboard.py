"""The Grafana dashboard, built in code with grafana-foundation-sdk. PANELS is the one list of
panels and their PromQL; `build()` turns it into a dashboard with namespace/job/model/version
variables, `prometheus_query()` resolves the variables so tests and the PNG renderer can run the
very same queries against a real Prometheus (no Grafana server runs here). One dashboard serves
both runtimes: the handler metrics are the same on both; a panel built on TorchServe's frontend
metrics says so in its description (PanelSpec.runtimes). No query pins `job` to a value: the
scrape config names jobs (prometheus-operator: `<namespace>/<PodMonitor>`), the $job variable
only narrows."""
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

TORCHSERVE, KSERVE_NATIVE, RUNTIMES = n.TORCHSERVE, n.KSERVE_NATIVE, n.RUNTIMES
RUNTIME_TITLES = {TORCHSERVE: "TorchServe", KSERVE_NATIVE: "KServe-native runtime"}

# selectors: scrape targets, handler metrics, TorchServe frontend metrics (model_version is
# "default" there: the frontend does not know the archive's version)
TARGET_SEL = f'{n.NAMESPACE}=~"$namespace", {n.JOB}=~"$job"'
SEL = f'{TARGET_SEL}, {n.MODEL}=~"$model", {n.VERSION}=~"$version"'
TS_SEL = f'{TARGET_SEL}, {n.TS_MODEL}=~"$model"'
TARGET = f"{n.NAMESPACE}, {n.JOB}, {n.INSTANCE}"
OURS = f"on ({TARGET}) {n.MODEL_LOAD_SECONDS}"  # `x and OURS`: only targets serving our handler
M = f"{{{{{n.MODEL}}}}} {{{{{n.VERSION}}}}}"  # legend: "{{ModelName}} {{ModelVersion}}"
# DCGM series carry the GPU's pod, not ours as scrape target: the namespace variable only
DCGM_SEL = f'{n.DCGM_NAMESPACE}=~"$namespace", {n.DCGM_POD}!=""'


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
    runtimes: tuple[str, ...] = RUNTIMES  # the runtimes whose metrics the panel can show

    def full_description(self) -> str:
        only = "" if self.runtimes == RUNTIMES else " and ".join(RUNTIME_TITLES[x] for x in self.runtimes) + " only. "
        return (only + self.description).strip()


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Request rate by model", "reqps", (
        Query(f"sum by ({n.TS_MODEL}, {n.TS_VERSION}) ({r.REQUEST_RATE}{{{TS_SEL}}})", f"{{{{{n.TS_MODEL}}}}} requests (TorchServe)"),
        Query(f"sum by ({n.MODEL}, {n.VERSION}) ({r.IMAGE_RATE}{{{SEL}}})", f"{M} images"),
    ), "Images the handler saw per second (both runtimes), and TorchServe's inference requests"),
    PanelSpec("Error ratio by HTTP status", "percentunit", (
        Query(f'sum by (status) ({r.HTTP_RATE}{{{TARGET_SEL}, status!="2xx"}}) / ignoring(status) group_left '
              f"sum ({r.HTTP_RATE}{{{TARGET_SEL}}})", "{{status}}"),
    ), "Requests4XX/5XX over all HTTP calls TorchServe answered; the KServe-native runtime counts no "
       "HTTP statuses: its refused inputs are in \"Rejected inputs by reason\"", runtimes=(TORCHSERVE,)),
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
    ), "TorchServe keeps running totals only: mean = rate(total µs) / rate(requests). The KServe-native "
       "runtime has no request queue (see the handler latency)", runtimes=(TORCHSERVE,)),
    PanelSpec("Batch size (mean images per forward pass)", "short", (
        Query(f"sum by ({n.MODEL}, {n.VERSION}) (rate({n.BATCH_SIZE}_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({n.MODEL}, {n.VERSION}) (rate({n.BATCH_SIZE}_count{{{SEL}}}[{RATE}]))", M),
    )),
    PanelSpec("Predictions by class", "ops", (
        Query(f"sum by ({n.MODEL}, {n.CLASS}) (rate({n.PREDICTIONS}{{{SEL}}}[{RATE}]))", f"{{{{{n.MODEL}}}}} {{{{{n.CLASS}}}}}"),
    )),
    PanelSpec("CPU", "percent", (
        Query(f"max by ({n.INSTANCE}) ({n.CPU_UTILIZATION}{{{TARGET_SEL}}})", "{{instance}} host (TorchServe)"),
        Query(f"100 * max by ({n.INSTANCE}) (rate({n.PROCESS_CPU_SECONDS}{{{TARGET_SEL}}}[{RATE}]) and {OURS})",
              "{{instance}} process, % of one core (KServe-native)"),
    ), "TorchServe: its host's CPU (CPUUtilization). KServe-native runtime: its process "
       "(process_cpu_seconds_total), 100% = one core"),
    PanelSpec("Memory", "bytes", (
        Query(f"1048576 * max by ({n.INSTANCE}) ({n.MEMORY_USED}{{{TARGET_SEL}}})", "{{instance}} host used (TorchServe)"),
        Query(f"max by ({n.INSTANCE}) ({n.PROCESS_RSS_BYTES}{{{TARGET_SEL}}} and {OURS})",
              "{{instance}} process resident (KServe-native)"),
    ), "TorchServe: its host's used memory (MemoryUsed, MiB). KServe-native runtime: its process's resident memory"),
    PanelSpec("GPU utilization and memory", "percent", (
        Query(f"max by ({n.INSTANCE}, {n.DEVICE_ID}) ({n.GPU_UTILIZATION}{{{TARGET_SEL}}})",
              f"{{{{instance}}}} GPU {{{{{n.DEVICE_ID}}}}} busy (TorchServe)"),
        Query(f"max by ({n.INSTANCE}, {n.DEVICE_ID}) ({n.GPU_MEMORY_UTILIZATION}{{{TARGET_SEL}}})",
              f"{{{{instance}}}} GPU {{{{{n.DEVICE_ID}}}}} memory (TorchServe)"),
        Query(f"max by ({n.DCGM_POD}, {n.DCGM_GPU}) ({n.DCGM_GPU_UTIL}{{{DCGM_SEL}}})",
              f"{{{{{n.DCGM_POD}}}}} GPU {{{{{n.DCGM_GPU}}}}} busy (DCGM)"),
        Query(f"100 * max by ({n.DCGM_POD}, {n.DCGM_GPU}) ({n.DCGM_FB_USED}{{{DCGM_SEL}}} / "
              f"({n.DCGM_FB_USED}{{{DCGM_SEL}}} + {n.DCGM_FB_FREE}{{{DCGM_SEL}}}))",
              f"{{{{{n.DCGM_POD}}}}} GPU {{{{{n.DCGM_GPU}}}}} memory (DCGM)"),
    ), "TorchServe's own GPU gauges (only where it finds a GPU), and NVIDIA's DCGM exporter (GPU Operator) "
       "for the GPUs allocated to pods in the namespace, either runtime. Empty on CPU-only serving"),
)


def _variable(name: str, label: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).datasource(DS).query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))


def build() -> dm.Dashboard:
    d = (gd.Dashboard(TITLE).uid(UID).tags(["image-classifier", "torchserve", "kserve"])
         .refresh("30s").time("now-1h", "now").timezone("browser")
         .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(_variable("namespace", "Namespace", f"label_values(up, {n.NAMESPACE})"))
         # the scrape job: one per runtime with the chart's PodMonitors, one per model with its ServiceMonitors
         .with_variable(_variable("job", "Job", f'label_values({n.MODEL_LOAD_SECONDS}{{{n.NAMESPACE}=~"$namespace"}}, {n.JOB})'))
         .with_variable(_variable("model", "Model", f"label_values({n.MODEL_LOAD_SECONDS}{{{TARGET_SEL}}}, {n.MODEL})"))
         .with_variable(_variable("version", "Version",
                                  f'label_values({n.MODEL_LOAD_SECONDS}{{{TARGET_SEL}, {n.MODEL}=~"$model"}}, {n.VERSION})')))
    for spec in PANELS:
        panel = gt.Panel().title(spec.title).unit(spec.unit).datasource(DS).height(8).span(12)
        if spec.full_description():
            panel = panel.description(spec.full_description())
        for i, q in enumerate(spec.queries):
            panel = panel.with_target(gp.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DS))
        d = d.with_panel(panel)
    return d.build()


def to_json() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


VARIABLES = ("namespace", "job", "model", "version")


def prometheus_query(expr: str, rate_interval: str = "1m", **chosen: str) -> str:
    """A panel query with the dashboard's variables resolved: to "everything" (All), or to the
    regex given by name, e.g. job="local/image-classifier-kserve-native"."""
    unknown = set(chosen) - set(VARIABLES)
    if unknown:
        raise ValueError(f"no such dashboard variables: {sorted(unknown)}")
    for var in VARIABLES:
        expr = expr.replace(f"${var}", chosen.get(var, ".*"))
    return expr.replace(RATE, rate_interval)

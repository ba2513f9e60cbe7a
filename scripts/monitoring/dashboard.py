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
from grafana_foundation_sdk.builders import heatmap as gh
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import timeseries as gt
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from scripts.monitoring import names as n
from scripts.monitoring import rules as r
from scripts.monitoring import slo

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
    heatmap: bool = False  # one query of bucket rates by `le`, drawn as a heatmap

    def full_description(self) -> str:
        only = "" if self.runtimes == RUNTIMES else " and ".join(RUNTIME_TITLES[x] for x in self.runtimes) + " only. "
        return (only + self.description).strip()


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Request rate by model", "reqps", (
        Query(f"sum by ({n.TS_MODEL}, {n.TS_VERSION}) ({r.REQUEST_RATE}{{{TS_SEL}}})", f"{{{{{n.TS_MODEL}}}}} requests (TorchServe)"),
        Query(f"sum by ({n.MODEL}, {n.VERSION}) ({r.IMAGE_RATE}{{{SEL}}})", f"{M} images"),
    ), "Images the handler saw per second (both runtimes), and TorchServe's inference requests"),
    PanelSpec("Error ratio by status class", "percentunit", (
        Query(f'sum by ({n.MODEL}, {n.CODE}) (rate({n.REQUEST_SECONDS}_count{{{SEL}, {n.CODE}!="2xx"}}[{RATE}])) '
              f"/ ignoring({n.CODE}) group_left sum by ({n.MODEL}) (rate({n.REQUEST_SECONDS}_count{{{SEL}}}[{RATE}]))",
              f"{{{{{n.MODEL}}}}} {{{{{n.CODE}}}}}"),
    ), "Inference requests answered 4xx/5xx (gRPC: their HTTP equivalent) over all, from the request histogram"),
    PanelSpec("Rejected inputs by reason", "percentunit", (
        Query(f"sum by ({n.MODEL}, {n.VERSION}, {n.REASON}) ({r.REJECTED_RATE}{{{SEL}}}) / ignoring({n.REASON}) group_left "
              f"sum by ({n.MODEL}, {n.VERSION}) ({r.IMAGE_RATE}{{{SEL}}})", f"{M} {{{{{n.REASON}}}}}"),
    ), "image_handler_rejected_total over all images, by reason"),
    PanelSpec("Request latency p50 / p95 / p99", "s", tuple(
        Query(f"{rule}{{{SEL}}}", f"{M} {key}") for key, rule in r.REQUEST_QUANTILE.items()
    ), f"{n.REQUEST_SECONDS}: each inference request from its arrival to its answer, REST and gRPC"),
    PanelSpec("Request latency heatmap", "s", (
        Query(f"sum by (le) (rate({n.REQUEST_SECONDS}_bucket{{{SEL}}}[{RATE}]))", "{{le}}"),
    ), "Requests per second in each latency bucket (0.1 ms .. 10 s, five a decade)", heatmap=True),
    PanelSpec("Handler latency p50 / p95 / p99", "s", tuple(
        Query(f"{rule}{{{SEL}}}", f"{M} {key}") for key, rule in r.HANDLE_QUANTILE.items()
    ), 'image_handler_stage_seconds{stage="handle"}: one batch through the handler'),
    PanelSpec("Stage p95", "s", (
        Query(f'{r.STAGE_P95}{{{SEL}, {n.STAGE}!="{n.HANDLE_STAGE}"}}', f"{M} {{{{{n.STAGE}}}}}"),
    )),
    PanelSpec("Queue wait (mean per request)", "s", (
        Query(f"sum by ({n.TS_MODEL}) (rate({n.QUEUE_LATENCY_US}{{{TS_SEL}}}[{RATE}])) / 1e6 / "
              f"sum by ({n.TS_MODEL}) (rate({n.REQUESTS_TOTAL}{{{TS_SEL}}}[{RATE}]))", f"{{{{{n.TS_MODEL}}}}} (TorchServe)"),
        Query(f"sum by ({n.MODEL}) (rate({n.QUEUE_WAIT_SECONDS}_sum{{{SEL}}}[{RATE}])) / "
              f"sum by ({n.MODEL}) (rate({n.QUEUE_WAIT_SECONDS}_count{{{SEL}}}[{RATE}]))", f"{{{{{n.MODEL}}}}} (KServe-native)"),
    ), "A request's wait for its forward pass. TorchServe keeps running totals (ts_queue_latency_microseconds); "
       f"the KServe-native runtime a histogram ({n.QUEUE_WAIT_SECONDS})"),
    PanelSpec("Requests in progress and queued", "short", (
        Query(f"sum by ({n.MODEL}) ({r.IN_FLIGHT}{{{SEL}}})", f"{{{{{n.MODEL}}}}} in progress (mean, Little's law)"),
        Query(f"sum by ({n.MODEL}) ({n.INFLIGHT}{{{SEL}}})", f"{{{{{n.MODEL}}}}} in the batcher (KServe-native)"),
        Query(f"sum by ({n.MODEL}) ({n.QUEUE_DEPTH}{{{SEL}}})", f"{{{{{n.MODEL}}}}} queued (KServe-native)"),
    ), "Both runtimes: the time spent in requests per second, what the KEDA option scales on. "
       "The KServe-native runtime's gauges: requests waiting for or in a forward pass, and those waiting"),
    PanelSpec("SLO error budget burn rate (1 h)", "short", tuple(
        Query(f"sum by ({n.MODEL}) ({slo.BAD_RATIO[kind]['1h']}{{{SEL}}}) / on ({n.MODEL}) group_left () "
              f'(1 - max by ({n.MODEL}) ({slo.OBJECTIVE[kind]}{{{n.NAMESPACE}=~"$namespace", {n.MODEL}=~"$model"}}))',
              f"{{{{{n.MODEL}}}}} {kind}")
        for kind in slo.SLOS
    ), "Bad requests over the share the objective allows (chart values `slo`): 1 spends the 30-day budget "
       "in 30 days; the alerts page at 14.4 (1 h) and 6 (6 h)"),
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
        if spec.heatmap:  # Prometheus buckets as they are: no recalculation, log y axis in seconds
            panel = (gh.Panel().title(spec.title).datasource(DS).height(8).span(12).calculate(False)
                     .y_axis(gh.YAxisConfig().unit(spec.unit)))
        else:
            panel = gt.Panel().title(spec.title).unit(spec.unit).datasource(DS).height(8).span(12)
        if spec.full_description():
            panel = panel.description(spec.full_description())
        for i, q in enumerate(spec.queries):
            target = gp.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DS)
            if spec.heatmap:
                target = target.format(pm.PromQueryFormat.HEATMAP)
            panel = panel.with_target(target)
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

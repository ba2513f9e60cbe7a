"""`make monitor`: a real Prometheus (127.0.0.1, free port, temp storage, 1 s scrapes, our rules)
scraping the local TorchServe's metrics port, a short bounded load with a few bad requests, then
the dashboard's panels queried from Prometheus and drawn to a PNG, with the request latency
percentiles Prometheus reads from the buckets beside the load generator's own. Uses the TorchServe of
`make serve` when its metrics port answers; otherwise starts one over --store and stops it after."""
from __future__ import annotations

import argparse
import math
import socket
import shutil
import sys
import time
from pathlib import Path

import requests

from scripts.monitoring import dashboard, load, names, render, rules
from scripts.monitoring.prometheus import Prometheus, job_name, sample_total, write_config
from handlers.settings import ServingSettings
from scripts.serve.settings import DEFAULT_MODEL
from scripts.serve.torchserve import TorchServe


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sample_images(data_dir: Path, out: Path) -> list[bytes]:
    from model import data
    data.ensure_fashion_mnist(data_dir)
    listed = data.export_samples(data.load(DEFAULT_MODEL, data_dir, train=False), out)
    return [(out / s["file"]).read_bytes() for s in listed]


def metrics_up(settings: ServingSettings) -> bool:
    try:
        return requests.get(settings.metrics_url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def panels_with_data(prom: Prometheus, timeout: float) -> list[str]:
    """Polls until every panel has a series to draw (the GPU one only where a GPU is): rates need
    two scrapes after a series' first sample and the recording rules one evaluation after that.
    Returns the panels still without data at the deadline."""
    gpu_here = shutil.which("nvidia-smi") is not None
    pending = [p for p in dashboard.PANELS
               if gpu_here or not any(names.GPU_UTILIZATION in q.expr for q in p.queries)]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending
                   if not any(prom.query(dashboard.prometheus_query(q.expr)) for q in p.queries)]
        if pending:
            time.sleep(0.5)
    return [p.title for p in pending]


def served_models(settings: ServingSettings) -> list[str]:
    resp = requests.get(f"{settings.management_url}/models", timeout=10)
    resp.raise_for_status()
    return [m["modelName"] for m in resp.json()["models"]]


def quantiles_against_client(prom: Prometheus, settings: ServingSettings, model: str, result: load.LoadResult,
                             window_s: float, timeout: float = 30) -> list[tuple[str, float, float]]:
    """(quantile, the load generator's, Prometheus' from the request histogram) for the load's good
    requests, once Prometheus has scraped the server's final count."""
    selector = f'{{{names.MODEL}="{model}", {names.CODE}="2xx"}}'
    count = f"sum({names.REQUEST_SECONDS}_count{selector})"
    deadline = time.monotonic() + timeout
    while True:
        served = server_total(settings, f"{names.REQUEST_SECONDS}_count", model)
        got = prom.query(count)
        if got and float(got[0]["value"][1]) >= served or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    window = f"{math.ceil(window_s)}s"
    out = []
    for key, q in rules.QUANTILES.items():
        expr = f"histogram_quantile({q}, sum by (le) (increase({names.REQUEST_SECONDS}_bucket{selector}[{window}])))"
        value = prom.query(expr)
        out.append((key, result.quantile(q), float(value[0]["value"][1]) if value else math.nan))
    return out


def server_total(settings: ServingSettings, sample: str, model: str) -> float:
    """The server's own value of `sample` (2xx) for `model`, summed over its other labels."""
    text = requests.get(settings.metrics_url, timeout=10).text
    return sample_total(text, sample, **{names.MODEL: model, names.CODE: "2xx"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=Path("build/serve"))
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=2000, help="at most this many requests")
    ap.add_argument("--seconds", type=float, default=20, help="and for at most this long")
    ap.add_argument("--clients", type=int, default=1,
                    help="client threads (1: each round trip is the server's time plus the HTTP client's, "
                         "so the percentiles Prometheus reads can be compared with the client's)")
    ap.add_argument("--out", type=Path, default=Path("build/monitor/dashboard.png"))
    args = ap.parse_args(argv)

    settings = ServingSettings.from_env()
    # TorchServe's and Prometheus' files beside the picture, for a look when a panel is empty;
    # each run starts them afresh.
    work = args.out.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    ts = None
    if metrics_up(settings):
        print(f"monitor: using the running TorchServe ({settings.metrics_url})")
    else:
        print(f"monitor: nothing on {settings.metrics_url}; starting TorchServe over {args.store}")
        ts = TorchServe(args.store, settings, work / "torchserve").start()
    prom = None
    try:
        config = write_config(work / "prometheus", {dashboard.TORCHSERVE: [f"{settings.host}:{settings.metrics_port}"]},
                              models=served_models(settings))
        prom = Prometheus(work / "prometheus", config, free_port()).start(timeout=60)
        print(f"monitor: Prometheus {prom.url} (config {config}, storage {prom.run_dir / 'tsdb'})")
        # the load only after a first scrape: a short load that ends before it leaves every rate at
        # zero (the heatmap shows exactly that: nothing)
        prom.wait_for(f'up{{job="{job_name(dashboard.TORCHSERVE)}"}} == 1', timeout=30)
        images = sample_images(args.data_dir, work / "samples")
        start = time.time()
        result = load.run_load(settings.inference_url, args.model, images, args.requests, args.seconds,
                               threads=args.clients)
        print(f"monitor: load: {result.summary()}")
        waiting_for = panels_with_data(prom, timeout=30)
        if waiting_for:
            print(f"monitor: no data yet after 30 s for: {', '.join(waiting_for)}")
        compared = quantiles_against_client(prom, settings, args.model, result, time.time() - start + 2)
        lines = [f"{key}: load generator {client * 1e3:.2f} ms, Prometheus {server * 1e3:.2f} ms"
                 for key, client, server in compared]
        print(f"monitor: {args.model} request latency, 2xx ({names.REQUEST_SECONDS} over the load):")
        for line in lines:
            print(f"  {line}")
        drawn = render.render(prom, args.out, start - 5, time.time(),
                              note=f"{args.model} request latency over the load: " + "; ".join(lines))
        for title, count in drawn.items():
            print(f"  {title}: {count} series")
        print(f"monitor: dashboard panels rendered to {args.out.resolve()}")
        print(f"monitor: Grafana dashboard JSON: charts/image-classifier/files/dashboard.json (uid {dashboard.UID})")
    finally:
        if prom is not None:
            prom.stop()
        if ts is not None:
            ts.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

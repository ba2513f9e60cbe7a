"""`make monitor`: a real Prometheus (127.0.0.1, free port, temp storage, 1 s scrapes, our rules)
scraping the local TorchServe's metrics port, a short bounded load with a few bad requests, then
the dashboard's panels queried from Prometheus and drawn to a PNG. Uses the TorchServe of
`make serve` when its metrics port answers; otherwise starts one over --store and stops it after."""
from __future__ import annotations

import argparse
import socket
import shutil
import sys
import time
from pathlib import Path

import requests

from scripts.monitoring import dashboard, load, names, render
from scripts.monitoring.prometheus import Prometheus, write_config
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=Path("build/serve"))
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=2000, help="at most this many requests")
    ap.add_argument("--seconds", type=float, default=20, help="and for at most this long")
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
        config = write_config(work / "prometheus", {dashboard.TORCHSERVE: [f"{settings.host}:{settings.metrics_port}"]})
        prom = Prometheus(work / "prometheus", config, free_port()).start(timeout=60)
        print(f"monitor: Prometheus {prom.url} (config {config}, storage {prom.run_dir / 'tsdb'})")
        images = sample_images(args.data_dir, work / "samples")
        start = time.time()
        result = load.run_load(settings.inference_url, args.model, images, args.requests, args.seconds)
        print(f"monitor: load: {result.summary()}")
        waiting_for = panels_with_data(prom, timeout=30)
        if waiting_for:
            print(f"monitor: no data yet after 30 s for: {', '.join(waiting_for)}")
        drawn = render.render(prom, args.out, start - 5, time.time())
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

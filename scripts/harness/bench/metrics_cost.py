"""What the handler's metrics cost per request, and what a scrape of TorchServe's exporter costs:

  in-process     one request's observations (PrometheusMetrics.record of a one-image batch, four
                 stages, plus request()) in one process, as the KServe-native runtime makes them
  multiprocess   the same in prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR: an
                 mmap'ed file per process), as TorchServe's workers make them for the exporter
  scrape         handlers/exporter.py's merge of the workers' files (MultiProcessCollector and
                 the text exposition), for 1, 2 and 4 workers that served two models

    python -m scripts.harness.bench.metrics_cost [--requests 20000] [--out docs/bench]

Each mode runs in its own process (multiprocess mode is chosen when prometheus_client is first
imported). Writes <out>/metrics-cost.{md,json}."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from handlers import metrics as hm
from scripts.harness import machine
from scripts.monitoring.prometheus import sample_total

REPEATS = 5
SCRAPES = 20
WORKERS = (1, 2, 4)


def observe(requests: int, model: str = "m") -> float:
    """Seconds per request for `requests` requests' observations (the best of REPEATS rounds)."""
    metrics = hm.PrometheusMetrics(model, "1.0")
    obs = hm.Observation(seconds={stage: 0.0004 for stage in hm.STAGES}, batch_size=1,
                         predicted={"Bag": 1}, rejected={})
    rounds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(requests):
            metrics.record(obs)
            metrics.request("rest", 200, 0.001 + (i % 50) * 0.0002)
        rounds.append((time.perf_counter() - start) / requests)
    return min(rounds)


def scrape(directory: Path) -> dict:
    """Median seconds of one merge of the folder's files, the exposition's size in bytes and the
    requests it counts."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    times, text = [], b""
    for _ in range(SCRAPES):
        start = time.perf_counter()
        text = generate_latest(registry)
        times.append(time.perf_counter() - start)
    requests = sample_total(text.decode(), f"{hm.REQUEST_SECONDS}_count")
    return {"seconds": statistics.median(times), "bytes": len(text), "requests": int(requests)}


def worker_requests(requests: int) -> int:
    """Requests one simulated worker observes per model (in each of REPEATS rounds)."""
    return max(requests // 10, 1)


def child(mode: str, requests: int) -> dict:
    if mode == "worker":  # one TorchServe worker serving two models
        for model in ("a", "b"):
            observe(worker_requests(requests), model)
        return {}
    return {"seconds_per_request": observe(requests)}


def run(mode: str, requests: int, multiproc_dir: Path | None = None) -> dict:
    env = {**os.environ, **({hm.MULTIPROC_DIR_ENV: str(multiproc_dir)} if multiproc_dir else {})}
    if not multiproc_dir:
        env.pop(hm.MULTIPROC_DIR_ENV, None)
    out = subprocess.run([sys.executable, "-m", "scripts.harness.bench.metrics_cost", "--child", mode,
                          "--requests", str(requests)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def measure(requests: int) -> dict:
    result = {"in-process": run("observe", requests)}
    with tempfile.TemporaryDirectory() as tmp:
        result["multiprocess"] = run("observe", requests, Path(tmp))
    result["scrape"] = {}
    for workers in WORKERS:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(workers):
                run("worker", requests, Path(tmp))
            result["scrape"][workers] = scrape(Path(tmp))
    return result


def markdown(record: dict) -> str:
    m, r = record["machine"], record["result"]
    lines = ["# What the handler's metrics cost", "",
             f"- date: {record['date']}", f"- command: `{record['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
             f"git {m['commit']}; load average {m['load_average_at_start']} at the start",
             f"- {record['requests']} requests per round, best of {REPEATS} rounds; scrapes: median of {SCRAPES}", "",
             "| per request: a one-image batch's observations + the request histogram | µs |", "| --- | --- |"]
    for mode in ("in-process", "multiprocess"):
        lines.append(f"| {mode} | {r[mode]['seconds_per_request'] * 1e6:.1f} |")
    lines += ["", "| exporter scrape: workers' files merged (two models each) | ms | exposition bytes |",
              "| --- | --- | --- |"]
    for workers, s in r["scrape"].items():
        lines.append(f"| {workers} worker(s) | {s['seconds'] * 1e3:.2f} | {s['bytes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--child", choices=("observe", "worker"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.requests)))
        return 0
    print(f"metrics_cost: {args.requests} requests a round, {REPEATS} rounds per mode", flush=True)
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine.describe(),
              "command": "python -m scripts.harness.bench.metrics_cost " + " ".join(argv or sys.argv[1:]),
              "requests": args.requests, "result": measure(args.requests)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics-cost.json").write_text(json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    (args.out / "metrics-cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

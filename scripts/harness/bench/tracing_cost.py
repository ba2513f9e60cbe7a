"""What the KServe-native runtime's traces cost (scripts/runtime/tracing.py): one model served by
three runtimes at once, traces off (the default), on with every request sampled, and on with a
tenth sampled (parentbased_traceidratio 0.1, the chart's `tracing.sampleRatio`), each sending
OTLP/HTTP to Jaeger built from its Go module (scripts/monitoring/jaeger.py). Raw image bytes on
the v1 route at each concurrency, interleaved rounds, medians; each answer checked. Writes
<out>/tracing-cost.{md,json}.

    python -m scripts.harness.bench.tracing_cost [--checkpoint runs/fashion-mnist/model.pt] [--repeats 5]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from scripts.harness import machine
from scripts.harness.bench import models, targets
from scripts.harness.bench.points import aggregate, run_point
from scripts.monitoring.jaeger import Jaeger
from scripts.serve import archive
from scripts.serve.kserve_native import KServeRuntime
from scripts.serve.process import free_ports
from scripts.serve.settings import DEFAULT_MODEL

# target name -> the runtime's OTEL_* besides the endpoint (None: traces off)
VARIANTS = {"traces off": None,
            "traces on, all sampled": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
            "traces on, 0.1 sampled": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                       "OTEL_TRACES_SAMPLER_ARG": "0.1"}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.harness.bench.tracing_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("runs") / DEFAULT_MODEL / "model.pt")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    return p


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = ["# What the KServe-native runtime's traces cost", "",
             f"- date: {record['date']}", f"- command: `{record['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
             f"git {m['commit']}; load average {m['load_average_at_start']} at the start, "
             f"{[round(x, 2) for x in record['load_average']]} at the end",
             f"- model: {record['model']}; {record['images']} real Fashion-MNIST test images, raw bytes on "
             f"the v1 route; {record['duration']} s per point, {record['repeats']} interleaved rounds (medians)",
             "- backend: Jaeger (scripts/monitoring/jaeger.py) on the same cores, OTLP/HTTP, the SDK's batch "
             "span processor with its defaults", "- spans per traced request: the server span and five stages "
             "(decode, batch wait, preprocess, forward, postprocess)", "",
             "| runtime | concurrency | req/s | range | p50 ms | p99 ms | server CPU ms/req | × traces off | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in record["points"]:
        lines.append(f"| {p['target']} | {p['concurrency']} | {p['throughput_rps']} | {p['throughput_min']}–"
                     f"{p['throughput_max']} | {p['p50_ms']} | {p['p99_ms']} | {p['server_cpu_ms']} | "
                     f"{p['vs_off']} | {p['errors']} |")
    lines += ["", f"Traces that reached Jaeger (all-sampled runtime): {record['traces_in_jaeger']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.checkpoint.exists():
        print(f"tracing_cost: error: no checkpoint at {args.checkpoint}: run `make train` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    started, rounds, host = time.time(), {}, machine.describe()
    try:
        images = models.fashion_mnist_images(args.data_dir, 32)
        archive.archive(args.checkpoint, work / "store", DEFAULT_MODEL)
        with contextlib.ExitStack() as stack:
            jaeger = stack.enter_context(targets.Stopper(Jaeger(work / "jaeger").start(timeout=120)))
            plan = []
            for name, otel in VARIANTS.items():
                env = None if otel is None else {**otel, "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
                                                 "OTEL_SERVICE_NAME": name.replace(" ", "-").replace(",", "")}
                rt = stack.enter_context(targets.Stopper(KServeRuntime(
                    work / "store" / "model-store", work / name.replace(" ", "-"), *free_ports(2),
                    extra_env=env).start(timeout=240)))
                plan.append((name, targets.kserve_rest_client(rt, DEFAULT_MODEL, images), rt))
            send = plan[0][1]()
            expected = [send(i) for i in range(len(images))]
            total = args.repeats * len(args.concurrency) * len(plan)
            with tqdm(total=total, desc="tracing cost", unit="point") as bar:
                for r in range(args.repeats):
                    order = plan[r % len(plan):] + plan[:r % len(plan)]
                    for c in args.concurrency:
                        for name, client, rt in order:
                            bar.set_postfix_str(f"round {r + 1} {name} c={c}")
                            point = run_point(name, client, expected, c, args.duration, 1.0,
                                              cpu_seconds=lambda rt=rt: targets.group_cpu_seconds(rt.proc.pid))
                            rounds.setdefault((name, c), []).append(point.to_dict())
                            bar.update()
            time.sleep(6)  # the SDK's batch processor sends every 5 s by default
            in_jaeger = len({s["trace_id"] for s in jaeger.find("traces-on-all-sampled", int(started * 1e9))})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    points = [aggregate(rs) for rs in rounds.values()]
    off = {p["concurrency"]: p["throughput_rps"] for p in points if p["target"] == "traces off"}
    for p in points:
        p["vs_off"] = round(p["throughput_rps"] / off[p["concurrency"]], 2) if off.get(p["concurrency"]) else None
    points.sort(key=lambda p: (p["concurrency"], list(VARIANTS).index(p["target"])))
    record = {"date": datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m scripts.harness.bench.tracing_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": host, "model": DEFAULT_MODEL, "images": len(images),
              "duration": args.duration, "repeats": args.repeats, "load_average": list(os.getloadavg()),
              "points": points, "traces_in_jaeger": f"{in_jaeger} (the query's default limit caps the count)"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracing-cost.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "tracing-cost.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

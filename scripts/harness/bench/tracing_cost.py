"""What the KServe-native runtime's traces cost (scripts/runtime/tracing.py): one model served by
three runtimes at once, traces off (the default), on with every request sampled, and on with a
tenth sampled (parentbased_traceidratio 0.1, the chart's `tracing.sampleRatio`), each sending
OTLP/HTTP to Jaeger built from its Go module (scripts/monitoring/jaeger.py). Raw image bytes on
the v1 route at each concurrency, interleaved rounds, medians; each answer checked. Writes
<out>/tracing-cost.{md,json}.

    python -m scripts.harness.bench.tracing_cost [--checkpoint runs/fashion-mnist/model.pt] [--repeats 5]
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scripts.harness import machine
from scripts.harness.bench import models, targets, variants
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


def markdown(record: dict) -> str:
    return variants.markdown("What the KServe-native runtime's traces cost", record, [
        "- backend: Jaeger (scripts/monitoring/jaeger.py) on the same cores, OTLP/HTTP, the SDK's batch span "
        "processor with its defaults",
        "- spans per traced request: the server span and five stages (decode, batch wait, preprocess, forward, "
        "postprocess)"], "traces off") + (
        f"\nTraces that reached Jaeger (all-sampled runtime): {record['traces_in_jaeger']}\n")


def main(argv: list[str] | None = None) -> int:
    args = variants.get_args_parser("python -m scripts.harness.bench.tracing_cost", __doc__).parse_args(argv)
    if not args.checkpoint.exists():
        print(f"tracing_cost: error: no checkpoint at {args.checkpoint}: run `make train` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    started, host = time.time(), machine.describe()
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
                plan.append((name, targets.kserve_rest_client(rt, DEFAULT_MODEL, images),
                             lambda rt=rt: targets.group_cpu_seconds(rt.proc.pid)))
            send = plan[0][1]()
            expected = [send(i) for i in range(len(images))]
            points = variants.interleaved(plan, expected, args.concurrency, args.repeats, args.duration, "tracing cost")
            time.sleep(6)  # the SDK's batch processor sends every 5 s by default
            in_jaeger = len({s["trace_id"] for s in jaeger.find("traces-on-all-sampled", int(started * 1e9))})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = variants.record("scripts.harness.bench.tracing_cost", argv, started, host, args, len(images), points,
                             traces_in_jaeger=f"{in_jaeger} (the query's default limit caps the count)")
    variants.write(args.out, "tracing-cost", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

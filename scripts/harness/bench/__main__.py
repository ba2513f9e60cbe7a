"""`make bench`: the same model and images through (a) the handler in-process, (b) TorchServe REST,
(c) TorchServe gRPC, (d) the KServe-native runtime over REST and gRPC, and (e) a FastAPI baseline
written the way people write one today; the `-onnx` targets run (a), (b) and (d) on the same
checkpoint archived as ONNX (ONNX Runtime: model/export.py), the `-int8` targets (a), (b) and (d)
REST on it quantized to int8 (model/quantize.py); concurrency levels, batch settings, throughput and
p50/p95/p99, ratios to (a) and (e) from the same run. Loopback only, bounded in time: each point
runs `--duration` seconds after a warm-up. Writes <out>/bench.{json,md,png} (other models than the
default: bench-<model>.*).

`--bench-model` picks the model and its images (scripts/harness/bench/models.py). With `--repeats N`
every server runs at once and the points are measured in N rounds, each in another order of the
targets, so that a slow minute of the machine falls on all of them; each point reports the median
of its rounds with their spread. `--limit` adds the machine's in-process limit for the model
(scripts/harness/bench/limit.py) and each point's fraction of it."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from handlers.settings import ENV_PREFIX
from scripts.harness import machine
from scripts.harness.bench import limit, report, targets
from scripts.harness.bench.models import BENCH_MODELS
from scripts.harness.bench.points import aggregate, run_point
from scripts.harness.latency import quantile
from scripts.runtime.mar import read_spec
from scripts.serve import archive
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL, ModelServingSettings



# The serving paths, by name (--targets); the in-process one is measured one request at a time.
TARGETS = ("in-process", "fastapi-baseline", "fastapi-1-thread", "kserve-rest", "kserve-grpc", "torchserve-rest",
           "torchserve-grpc", "in-process-onnx", "kserve-rest-onnx", "kserve-grpc-onnx", "torchserve-rest-onnx",
           "in-process-int8", "kserve-rest-int8", "torchserve-rest-int8")
ONNX = "-onnx"  # the suffix of the targets (and the served name) of the ONNX archive
INT8 = report.INT8  # ... and of its int8 form; its answers are checked against its own in-process ones


def inprocess_batches(classifier, images: list[bytes], sizes: list[int], seconds: float) -> list[dict]:
    """The handler's `predict` on N images at once, for `seconds` per size."""
    out = []
    for b in sizes:
        lat = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            classifier.predict([images[i % len(images)] for i in range(b)])
            lat.append(time.perf_counter() - t0)
        out.append({"batch": b, "images_per_s": round(b * len(lat) / sum(lat), 1),
                    "p50_ms": round(1e3 * quantile(lat, 0.5), 3)})
    return out


def batch_setting(text: str) -> tuple[int, int, int | None]:
    """SIZE:DELAY_MS[:WORKERS] (no WORKERS: the archive's)."""
    try:
        numbers = [int(x) for x in text.split(":")]
        if len(numbers) not in (2, 3):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE:DELAY_MS[:WORKERS] such as 8:5 or 1:0:2, got {text!r}") from None
    size, delay, workers = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None
    if size < 1 or delay < 0 or (workers is not None and workers < 1):
        raise argparse.ArgumentTypeError(f"batch size and workers must be ≥ 1 and delay ≥ 0, got {text!r}")
    return size, delay, workers


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the model to serve (make train writes the default)")
    p.add_argument("--bench-model", choices=sorted(BENCH_MODELS), default=DEFAULT_MODEL,
                   help="which model and images (scripts/harness/bench/models.py); "
                        f"{DEFAULT_MODEL} serves --checkpoint")
    p.add_argument("--model-name", default=None, help="the name it is served under (default: --bench-model)")
    p.add_argument("--repeats", type=int, default=1, help="rounds per point, interleaved; medians reported")
    p.add_argument("--limit", action="store_true", help="also sweep the in-process limit (limit.py)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="Fashion-MNIST (test images)")
    p.add_argument("--images", type=int, default=32, help="distinct real images sent round-robin (at most)")
    p.add_argument("--concurrency", type=int, nargs="+", default=None,
                   help="client counts (default: the model's, scripts/harness/bench/models.py)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point (not counted)")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap per point")
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p.add_argument("--torchserve-batch", type=batch_setting, nargs="*", default=[(1, 0, None)],
                   metavar="SIZE:DELAY_MS[:WORKERS]",
                   help="TorchServe batch settings (and worker count) measured besides the archive's own (named "
                        "plainly), each with a (bSIZE/DELAYms[/Nw]) suffix; one equal to the archive's is skipped "
                        "(default: 1:0)")
    p.add_argument("--kserve-args", default="", help="extra flags for scripts.runtime, e.g. '--inline-below-ms 2'")
    p.add_argument("--inprocess-batches", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--out", type=Path, default=Path("docs/bench"), help="where bench.{json,md,png} go")
    p.add_argument("--mode", default="CPU", help="a label for the results' title")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    model = BENCH_MODELS[args.bench_model]
    name = args.model_name or args.bench_model
    if model.make_checkpoint is None and not args.checkpoint.exists():
        print(f"bench: error: no checkpoint at {args.checkpoint}: run `make train` first (or pass --checkpoint)",
              file=sys.stderr)
        return 2
    args.concurrency = args.concurrency or list(model.levels)
    if any(c < 1 for c in args.concurrency) or args.duration <= 0 or args.repeats < 1:
        print("bench: error: concurrency levels and --repeats must be ≥ 1 and --duration > 0", file=sys.stderr)
        return 2
    levels = sorted(set(args.concurrency))
    rounds: dict[tuple[str, int], list[dict]] = {}
    notes: list[str] = []
    servers: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    # each archive's in-process work on its own thread, as the runtime gives each model its own
    executors = [ThreadPoolExecutor(1, thread_name_prefix=n) for n in ("torch", "onnx", "int8")]
    started = time.time()
    load_average = {"start": [round(x, 2) for x in os.getloadavg()]}
    try:
        # Every torch call of this process on one thread: torch's OpenMP pool belongs to the thread
        # that runs a parallel op, and a second pool throttles the first (scripts/runtime/batching.py)
        def runner(executor: ThreadPoolExecutor):
            return lambda fn, *args, **kwargs: executor.submit(fn, *args, **kwargs).result()

        on_torch, on_onnx, on_int8 = map(runner, executors)
        images = on_torch(model.images, args.data_dir, args.images)
        checkpoint = on_torch(model.make_checkpoint, work) if model.make_checkpoint else args.checkpoint
        store = work / "store"
        mar, _ = on_torch(archive.archive, checkpoint, store, name)
        serving = read_spec(mar).serving
        classifier = on_torch(targets.load_inprocess, mar, work / "unpacked")
        expected = [next(iter(on_torch(classifier.predict, [img])[0])) for img in images]
        onnx = any(t.endswith(ONNX) for t in args.targets)
        if onnx:  # beside the eager archive in the same store: every server serves both
            onnx_mar, _ = on_torch(archive.archive, checkpoint, store, name + ONNX, fmt="onnx")
            onnx_serving = read_spec(onnx_mar).serving
            onnx_classifier = on_onnx(targets.load_inprocess, onnx_mar, work / "unpacked-onnx")
        int8 = any(map(report.is_int8, args.targets))
        if int8:
            int8_mar, _ = on_torch(archive.archive, checkpoint, store, name + INT8, fmt="onnx-int8",
                                   data_dir=args.data_dir)
            int8_serving = read_spec(int8_mar).serving
            int8_classifier = on_int8(targets.load_inprocess, int8_mar, work / "unpacked-int8")
            int8_expected = [next(iter(on_int8(int8_classifier.predict, [img])[0])) for img in images]
            changed = sum(a != b for a, b in zip(int8_expected, expected))
            notes.append(f"int8: top-1 differs from the fp32 handler's on {changed} of {len(images)} images; the "
                         "-int8 targets are checked against the int8 archive's own in-process answers")
        limit_result = (on_torch(limit.sweep, checkpoint, images, seconds=args.duration / 2, int8=int8, data_dir=args.data_dir)
                        if args.limit else None)
        results_batches = (on_torch(inprocess_batches, classifier, images, args.inprocess_batches, args.duration / 2)
                           if "in-process" in args.targets else [])

        with contextlib.ExitStack() as stack:
            # every server up before the first point: the rounds interleave their points
            plan: list[tuple] = []  # (target, client, levels, server, the top-1 expected per image)
            if "in-process" in args.targets:
                # one request at a time: the pipeline's own cost, the floor the servers add to
                plan.append(("in-process", targets.inprocess_client(classifier, images, on_torch), [1], None, expected))
            if "in-process-onnx" in args.targets:
                plan.append(("in-process-onnx", targets.inprocess_client(onnx_classifier, images, on_onnx), [1], None,
                             expected))
            if "in-process-int8" in args.targets:
                plan.append(("in-process-int8", targets.inprocess_client(int8_classifier, images, on_int8), [1], None,
                             int8_expected))
            for target, threads in (("fastapi-baseline", None), ("fastapi-1-thread", 1)):
                if target in args.targets:
                    base = stack.enter_context(targets.Stopper(
                        targets.start_baseline(checkpoint, work / target, torch_threads=threads)))
                    servers.append("FastAPI baseline: uvicorn, 1 worker, `async def` endpoint, multipart `UploadFile`"
                                   + (" (fastapi-1-thread: OMP_NUM_THREADS=1)" if threads else ""))
                    client = targets.baseline_client(base.port, images)
                    # its own answers: torchvision's resizing is not the handler's, and a top-1 on the
                    # edge (a photo between two classes, random weights) may differ; a changed answer
                    # is still caught
                    send = client()
                    own = [send(i) for i in range(len(images))]
                    if own != expected:
                        notes.append(f"{target}: top-1 differs from the handler's on {sum(a != b for a, b in zip(own, expected))} "
                                     f"of {len(images)} images (torchvision's resizing); checked against its own answers")
                    plan.append((target, client, levels, base, own))
            if {"kserve-rest", "kserve-grpc", "kserve-rest-onnx", "kserve-grpc-onnx", "kserve-rest-int8"} & set(args.targets):
                rt = stack.enter_context(targets.Stopper(
                    targets.start_kserve(store, work / "kserve", tuple(shlex.split(args.kserve_args)))))
                servers.append(f"KServe-native runtime: scripts/runtime/ {args.kserve_args}(REST raw bytes on the "
                               "v1 route; OIP gRPC ModelInfer, raw BYTES; greedy micro-batching)")
                if "kserve-rest" in args.targets:
                    plan.append(("kserve-rest", targets.kserve_rest_client(rt, name, images), levels, rt, expected))
                if "kserve-grpc" in args.targets:
                    plan.append(("kserve-grpc", targets.kserve_grpc_client(rt, name, images), levels, rt, expected))
                for client in (targets.kserve_rest_client, targets.kserve_grpc_client):
                    target = ("kserve-rest" if client is targets.kserve_rest_client else "kserve-grpc") + ONNX
                    if target in args.targets:
                        plan.append((target, client(rt, name + ONNX, images), levels, rt, expected))
                if "kserve-rest-int8" in args.targets:
                    plan.append(("kserve-rest-int8", targets.kserve_rest_client(rt, name + INT8, images), levels, rt,
                                 int8_expected))
            if {"torchserve-rest", "torchserve-grpc", "torchserve-rest-onnx", "torchserve-rest-int8"} & set(args.targets):
                own_setting = (serving.batch_size, serving.max_batch_delay_ms, serving.torchserve_worker_count)
                variants = [(None, None, None)] + [
                    (size, delay, workers) for size, delay, workers in args.torchserve_batch
                    if (size, delay, workers or serving.torchserve_worker_count) != own_setting]
                for n, (size, delay, workers) in enumerate(variants):
                    suffix = "" if n == 0 else f" (b{size}/{delay}ms{f'/{workers}w' if workers else ''})"
                    own = work / f"store-{n}"
                    shutil.copytree(store, own)
                    archive.write_config(own, model_settings=ModelServingSettings(
                        batch_size=size, max_batch_delay_ms=delay, torchserve_workers=workers))
                    ts = stack.enter_context(targets.Stopper(targets.start_torchserve(own, work / f"torchserve-{n}")))
                    servers.append(f"TorchServe 0.12{suffix}: {workers or serving.torchserve_worker_count} worker(s), batch size "
                                   f"{size or serving.batch_size}, max batch delay {serving.max_batch_delay_ms if delay is None else delay} ms")
                    if "torchserve-rest" in args.targets:
                        plan.append((f"torchserve-rest{suffix}", targets.torchserve_rest_client(ts, name, images), levels, ts,
                                     expected))
                    if "torchserve-grpc" in args.targets:
                        plan.append((f"torchserve-grpc{suffix}", targets.torchserve_grpc_client(ts, name, images), levels, ts,
                                     expected))
                    if n == 0 and "torchserve-rest-onnx" in args.targets:
                        plan.append(("torchserve-rest-onnx", targets.torchserve_rest_client(ts, name + ONNX, images), levels,
                                     ts, expected))
                    if n == 0 and "torchserve-rest-int8" in args.targets:
                        plan.append(("torchserve-rest-int8", targets.torchserve_rest_client(ts, name + INT8, images), levels,
                                     ts, int8_expected))

            total = args.repeats * sum(len(step[2]) for step in plan)
            with tqdm(total=total, desc=f"bench {args.bench_model}", unit="point") as bar:
                for r in range(args.repeats):
                    order = plan[r % len(plan):] + plan[:r % len(plan)]  # each round starts elsewhere
                    for c in levels:
                        for target, client, target_levels, server, answers in order:
                            if c not in target_levels:
                                continue
                            bar.set_postfix_str(f"round {r + 1} {target} c={c}")
                            cpu = (lambda s=server: targets.group_cpu_seconds(s.proc.pid)) if server else time.process_time
                            point = run_point(target, client, answers, c, args.duration, args.warmup,
                                              args.max_requests, cpu).to_dict()
                            rounds.setdefault((target, c), []).append(point)
                            bar.update()
                            if point["errors"] or point["wrong"]:
                                tqdm.write(f"  {target} c={c}: {point['errors']} errors, {point['wrong']} wrong "
                                           f"answers: {point.get('first_error', '')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for executor in executors:
            executor.shutdown()
    load_average["end"] = [round(x, 2) for x in os.getloadavg()]

    points = [aggregate(rs) for rs in rounds.values()]
    points.sort(key=lambda p: (list(dict.fromkeys(k[0] for k in rounds)).index(p["target"]), p["concurrency"]))
    report.add_ratios(points, limit_result)
    results = {
        "mode": args.mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m scripts.harness.bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "machine": machine.describe(), "load_average": load_average,
        # the SERVE_* settings every server and the in-process path inherit (handlers/settings.py)
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIX)},
        "bench_model": args.bench_model, "model": f"{name}: {model.what}", "images": len(images),
        "duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
        "wall_s": round(time.time() - started, 1), "serving_policy": serving.to_dict(),
        **({"onnx_serving_policy": onnx_serving.to_dict()} if onnx else {}),
        **({"int8_serving_policy": int8_serving.to_dict()} if int8 else {}),
        "servers": "; ".join(servers), "points": points,
        "inprocess_batches": results_batches, "limit": limit_result, "notes": notes,
    }
    results["verdicts"] = report.verdicts(points, args.bench_model)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench" if args.bench_model == DEFAULT_MODEL else f"bench-{args.bench_model}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(results))
    report.plot(results, args.out / f"{stem}.png")
    for v in results["verdicts"]:
        print(f"{v['verdict']:<6} {v['check']}: {report.fmt(v['value'], 2)}")
    print(f"bench: results in {args.out}/{stem}.md, {stem}.json and {stem}.png ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

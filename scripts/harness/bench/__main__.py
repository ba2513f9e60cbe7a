"""`make bench`: the same model and images through (a) the handler in-process, (b) TorchServe REST,
(c) TorchServe gRPC, (d) the KServe-native runtime over REST and gRPC, and (e) a FastAPI baseline
written the way people write one today; concurrency levels, batch settings, throughput and
p50/p95/p99, ratios to (a) and (e) from the same run. Loopback only, bounded in time: each point
runs `--duration` seconds after a warm-up. Writes <out>/bench.{json,md,png}."""
from __future__ import annotations

import argparse
import io
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from model import data
from scripts.serve import archive
from scripts.harness import machine
from scripts.harness.bench import report, targets
from scripts.harness.bench.points import run_point
from scripts.harness.latency import quantile
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL, ModelServingSettings



@dataclass(frozen=True)
class Target:
    """A serving path and how often it is measured: at every concurrency level (in-process: once,
    one request at a time) and once per --torchserve-batch setting (TorchServe) or once."""

    name: str
    every_level: bool = True
    per_batch_setting: bool = False


TARGETS = {t.name: t for t in (
    Target("in-process", every_level=False), Target("fastapi-baseline"), Target("fastapi-1-thread"),
    Target("kserve-rest"), Target("kserve-grpc"),
    Target("torchserve-rest", per_batch_setting=True), Target("torchserve-grpc", per_batch_setting=True))}


def planned_points(names: list[str], levels: list[int], batch_settings: list) -> int:
    return sum((len(levels) if TARGETS[n].every_level else 1)
               * (len(batch_settings) if TARGETS[n].per_batch_setting else 1) for n in names)


def test_images(data_dir: Path, n: int) -> list[bytes]:
    """The first `n` real Fashion-MNIST test images, PNG-encoded as a client would send them."""
    data.ensure_fashion_mnist(data_dir)
    ds = data.load(DEFAULT_MODEL, data_dir, train=False)
    out = []
    for img in data.pil_images(ds):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
        if len(out) == n:
            return out
    return out


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


def batch_setting(text: str) -> tuple[int, int]:
    try:
        size, delay = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE:DELAY_MS such as 8:5, got {text!r}") from None
    if size < 1 or delay < 0:
        raise argparse.ArgumentTypeError(f"batch size must be ≥ 1 and delay ≥ 0, got {text!r}")
    return size, delay


def get_args_parser() -> argparse.ArgumentParser:
    d = ModelServingSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the model to serve (make train writes the default)")
    p.add_argument("--model-name", default=DEFAULT_MODEL)
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="Fashion-MNIST (test images)")
    p.add_argument("--images", type=int, default=32, help="distinct real test images sent round-robin")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point (not counted)")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap per point")
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p.add_argument("--torchserve-batch", type=batch_setting, nargs="+",
                   default=[(d.batch_size, d.max_batch_delay_ms), (1, 0)], metavar="SIZE:DELAY_MS",
                   help="TorchServe batch settings to measure; the first is named plainly, the others "
                        "get a (bSIZE/DELAYms) suffix (default: the shipped 8:5, and 1:0)")
    p.add_argument("--kserve-args", default="", help="extra flags for scripts.runtime, e.g. '--inline-below-ms 2'")
    p.add_argument("--inprocess-batches", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--out", type=Path, default=Path("docs/bench"), help="where bench.{json,md,png} go")
    p.add_argument("--mode", default="CPU", help="a label for the results' title")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.checkpoint.exists():
        print(f"bench: error: no checkpoint at {args.checkpoint}: run `make train` first (or pass --checkpoint)",
              file=sys.stderr)
        return 2
    if any(c < 1 for c in args.concurrency) or args.duration <= 0:
        print("bench: error: concurrency levels must be ≥ 1 and --duration > 0", file=sys.stderr)
        return 2
    images = test_images(args.data_dir, args.images)
    levels = sorted(set(args.concurrency))
    points: list[dict] = []
    notes: list[str] = []
    servers: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    store = work / "store"
    mar, _ = archive.archive(args.checkpoint, store, args.model_name)
    classifier = targets.load_inprocess(mar, work / "unpacked")
    expected = []
    for img in images:
        result = classifier.predict([img])[0]
        expected.append(next(iter(result)))

    bar = tqdm(total=planned_points(args.targets, levels, args.torchserve_batch), desc="bench", unit="point")

    def measure(name: str, client, concurrencies, server=None) -> None:
        cpu = (lambda: targets.group_cpu_seconds(server.proc.pid)) if server else time.process_time
        for c in concurrencies:
            bar.set_postfix_str(f"{name} c={c}")
            point = run_point(name, client, expected, c, args.duration, args.warmup, args.max_requests,
                              cpu).to_dict()
            points.append(point)
            bar.update()
            if point["errors"] or point["wrong"]:
                tqdm.write(f"  {name} c={c}: {point['errors']} errors, {point['wrong']} wrong answers: "
                           f"{point.get('first_error', '')}")

    started = time.time()
    try:
        if "in-process" in args.targets:
            # one request at a time: the pipeline's own cost, the floor the servers add to
            measure("in-process", targets.inprocess_client(classifier, images), [1])
            results_batches = inprocess_batches(classifier, images, args.inprocess_batches, args.duration / 2)
        else:
            results_batches = []
        if "fastapi-baseline" in args.targets:
            with targets.Stopper(targets.start_baseline(args.checkpoint, work / "baseline")) as base:
                servers.append("FastAPI baseline: uvicorn, 1 worker, `async def` endpoint, multipart `UploadFile`")
                measure("fastapi-baseline", targets.baseline_client(base.port, images), levels, base)
        if "fastapi-1-thread" in args.targets:
            # the same app with OMP_NUM_THREADS=1: how much of the gap is torch's thread setting alone
            with targets.Stopper(targets.start_baseline(args.checkpoint, work / "baseline-1", torch_threads=1)) as base:
                servers.append("FastAPI baseline with OMP_NUM_THREADS=1 (fastapi-1-thread)")
                measure("fastapi-1-thread", targets.baseline_client(base.port, images), levels, base)
        if {"kserve-rest", "kserve-grpc"} & set(args.targets):
            with targets.Stopper(targets.start_kserve(store, work / "kserve", tuple(shlex.split(args.kserve_args)))) as rt:
                servers.append(f"KServe-native runtime: scripts/runtime/ {args.kserve_args}(REST raw bytes on the "
                               "v1 route; OIP gRPC ModelInfer, raw BYTES; greedy micro-batching)")
                if "kserve-rest" in args.targets:
                    measure("kserve-rest", targets.kserve_rest_client(rt, args.model_name, images), levels, rt)
                if "kserve-grpc" in args.targets:
                    measure("kserve-grpc", targets.kserve_grpc_client(rt, args.model_name, images), levels, rt)
        if {"torchserve-rest", "torchserve-grpc"} & set(args.targets):
            for n, (size, delay) in enumerate(args.torchserve_batch):
                suffix = "" if n == 0 else f" (b{size}/{delay}ms)"
                archive.write_config(store, model_settings=ModelServingSettings(batch_size=size, max_batch_delay_ms=delay))
                with targets.Stopper(targets.start_torchserve(store, work / f"torchserve-{n}")) as ts:
                    servers.append(f"TorchServe 0.12{suffix or ''}: 1 worker, batch size {size}, max batch delay {delay} ms")
                    if "torchserve-rest" in args.targets:
                        measure(f"torchserve-rest{suffix}", targets.torchserve_rest_client(ts, args.model_name, images), levels, ts)
                    if "torchserve-grpc" in args.targets:
                        measure(f"torchserve-grpc{suffix}", targets.torchserve_grpc_client(ts, args.model_name, images), levels, ts)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)

    report.add_ratios(points)
    results = {
        "mode": args.mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m scripts.harness.bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "machine": machine.describe(), "model": f"{args.model_name} ({args.checkpoint})", "images": len(images),
        "duration_s": args.duration, "warmup_s": args.warmup, "wall_s": round(time.time() - started, 1),
        "servers": "; ".join(servers), "points": points, "inprocess_batches": results_batches,
        "notes": notes,
    }
    results["verdicts"] = report.verdicts(points)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "bench.md").write_text(report.markdown(results))
    report.plot(results, args.out / "bench.png")
    for v in results["verdicts"]:
        print(f"{'MET ' if v['met'] else 'MISS'} {v['check']}: {report.fmt(v['value'], 2)}")
    print(f"bench: results in {args.out}/bench.md, bench.json and bench.png ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

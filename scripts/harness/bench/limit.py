"""The machine's limit for a model: the best in-process throughput of its network (images per
second through the forward pass, preprocessed tensors in), swept over batch size × threads ×
memory format (contiguous, channels_last), optionally × torch.compile, and the network exported
to ONNX and run by ONNX Runtime (model/export.py, as an ONNX archive runs); and what decoding and
preprocessing one request's image costs on one thread, through the handler's own code. A served
path is judged against this: no server can beat the forward pass it runs. With `--int8` the int8
export (model/quantize.py) is swept too, as a limit of its own: it answers differently, so it
never raises the fp32 paths' limit.

    python -m scripts.harness.bench.limit --bench-model imagenet [--compile] [--no-onnx] [--int8] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from handlers.accel import InferenceOptions
from handlers.networks import OnnxNetwork
from handlers.preprocess import bytes_to_tensor
from model import checkpoint, export
from scripts.harness import machine
from scripts.harness.bench.models import BENCH_MODELS
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL


@dataclass(frozen=True)
class Setting:
    batch: int
    threads: int
    channels_last: bool
    compiled: bool = False
    onnx: bool = False  # ONNX Runtime (its own layout: channels_last does not apply)
    int8: bool = False  # ... on the int8 export

    def engine(self) -> str:
        return ("ONNX Runtime int8" if self.int8 else "ONNX Runtime" if self.onnx
                else "torch.compile" if self.compiled else "eager")

    def label(self) -> str:
        layout = "" if self.onnx else f", {'channels_last' if self.channels_last else 'contiguous'}"
        return f"batch {self.batch}, {self.threads} thread{'s' if self.threads > 1 else ''}{layout}, {self.engine()}"


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` for the block, the process' own setting restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def forward_rate(net: torch.nn.Module | OnnxNetwork, x: torch.Tensor, s: Setting, seconds: float) -> float:
    """Images per second of `net` on batches of `s.batch` copies drawn from `x`, after a warm-up."""
    with torch_threads(s.threads):
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        model = net.to(memory_format=fmt) if isinstance(net, torch.nn.Module) else net
        if s.compiled:
            model = torch.compile(model)
        batch = x[torch.arange(s.batch) % len(x)].contiguous(memory_format=fmt)
        with torch.inference_mode():
            for _ in range(2):  # warm-up: allocator, kernels' first calls, compilation
                model(batch)
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or n < 2:
                model(batch)
                n += 1
        return n * s.batch / elapsed


def onnx_rate(path: Path, x: torch.Tensor, s: Setting, seconds: float) -> float:
    """The same measure for the ONNX export, in a session configured as an ONNX archive's."""
    with torch_threads(s.threads):
        net = OnnxNetwork(path, InferenceOptions(device="cpu", torch_threads=s.threads).resolve())
        return forward_rate(net, x, dataclasses.replace(s, channels_last=False), seconds)


def preprocess_seconds(images: list[bytes], spec, rounds: int = 3) -> float:
    """Seconds to decode and preprocess one image (the handler's PIL path, one thread)."""
    with torch_threads(1):
        t0 = time.perf_counter()
        for _ in range(rounds):
            for body in images:
                bytes_to_tensor(body, spec)
        return (time.perf_counter() - t0) / (rounds * len(images))


def best_of(rows: list[dict], settings: list[Setting], pre: float) -> dict:
    """The fastest setting, and one image end to end: its forward at that rate and its decoding,
    done one after the other."""
    best = max(range(len(rows)), key=lambda k: rows[k]["images_per_s"])
    return {"best": rows[best], "best_setting": settings[best].label(),
            "end_to_end_images_per_s": round(1 / (1 / rows[best]["images_per_s"] + pre), 1)}


def sweep(ckpt_path: Path, images: list[bytes], batches=(1, 8, 32), threads=(1, 2), compiled=(False,),
          seconds: float = 2.0, onnx: bool = True, int8: bool = False, data_dir: Path | None = None) -> dict:
    """The sweep's rows, the fp32 limit and, with `int8`, the int8 export's own (calibrated on the
    checkpoint's training images from `data_dir`, as the archive does)."""
    ckpt = checkpoint.load(ckpt_path)
    net, spec = checkpoint.build_net(ckpt), checkpoint.preprocess_spec(ckpt)
    x = torch.stack([bytes_to_tensor(b, spec) for b in images])
    settings = [Setting(b, t, last, c) for c in compiled for t in threads for last in (False, True) for b in batches]
    rows = [{**asdict(s), "images_per_s": round(forward_rate(net, x, s, seconds), 1)} for s in settings]
    int8_rows: list[dict] = []
    int8_settings: list[Setting] = []
    with tempfile.TemporaryDirectory(prefix="limit-onnx-") as tmp:
        for fmt, wanted, out_rows, out_settings in (("onnx", onnx, rows, settings),
                                                    ("onnx-int8", int8, int8_rows, int8_settings)):
            if not wanted:
                continue
            path, _ = export.export_checkpoint(ckpt, fmt, Path(tmp) / fmt, data_dir=data_dir)
            ort = [Setting(b, t, False, onnx=True, int8=fmt == "onnx-int8") for t in threads for b in batches]
            out_rows += [{**asdict(s), "images_per_s": round(onnx_rate(path, x, s, seconds), 1)} for s in ort]
            out_settings += ort
    pre = preprocess_seconds(images, spec)
    return {"rows": rows + int8_rows, "preprocess_ms": round(pre * 1e3, 3), **best_of(rows, settings, pre),
            **({"int8": best_of(int8_rows, int8_settings, pre)} if int8_rows else {})}


def table(result: dict) -> list[str]:
    """The sweep as Markdown table lines (here and in the bench report)."""
    def engine(r: dict) -> str:
        return Setting(**{k: r.get(k, False) for k in ("batch", "threads", "channels_last", "compiled", "onnx",
                                                         "int8")}).engine()

    return ["| engine | batch | threads | memory format | images/s (forward) |", "| --- | --- | --- | --- | --- |",
            *(f"| {engine(r)} | {r['batch']} | {r['threads']} | "
              f"{'–' if r.get('onnx') else 'channels_last' if r['channels_last'] else 'contiguous'} "
              f"| {r['images_per_s']} |" for r in result["rows"])]


def markdown(name: str, what: str, result: dict) -> str:
    lines = [f"## The limit: {name}", "", what, "", *table(result)]
    lines += ["", f"Best: {result['best']['images_per_s']} images/s ({result['best_setting']}). Decoding and "
              f"preprocessing one image: {result['preprocess_ms']} ms on one thread; one after the other, "
              f"{result['end_to_end_images_per_s']} images/s end to end."]
    if "int8" in result:
        q = result["int8"]
        lines += ["", f"int8 (its own limit: it answers differently): best {q['best']['images_per_s']} images/s "
                  f"({q['best_setting']}), {q['end_to_end_images_per_s']} images/s end to end."]
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-model", choices=sorted(BENCH_MODELS), default=DEFAULT_MODEL)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help=f"for {DEFAULT_MODEL}: the trained one")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--compile", action="store_true", help="also measure each setting under torch.compile")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="leave out ONNX Runtime")
    p.add_argument("--int8", action="store_true", help="also sweep the int8 export (its own limit)")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per setting")
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = p.parse_args(argv)
    if min(args.batches) < 1 or min(args.threads) < 1 or args.seconds <= 0:
        print("limit: error: batches and threads must be ≥ 1, --seconds > 0", file=sys.stderr)
        return 2
    model = BENCH_MODELS[args.bench_model]
    with tempfile.TemporaryDirectory(prefix="limit-") as work:
        ckpt = model.make_checkpoint(Path(work)) if model.make_checkpoint else args.checkpoint
        if not Path(ckpt).exists():
            print(f"limit: error: no checkpoint at {ckpt}: run `make train` first (or pass --checkpoint)",
                  file=sys.stderr)
            return 2
        result = sweep(ckpt, model.images(args.data_dir, 32), args.batches, args.threads,
                       (False, True) if args.compile else (False,), args.seconds, args.onnx, args.int8, args.data_dir)
    result |= {"model": args.bench_model, "what": model.what, "machine": machine.describe(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": " ".join(["python -m scripts.harness.bench.limit", *(argv if argv is not None else sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"limit-{args.bench_model}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"limit-{args.bench_model}.md").write_text(
        markdown(args.bench_model, model.what, result) + f"\n- command: `{result['command']}`\n- date: {result['date']}\n"
        f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores\n")
    print(markdown(args.bench_model, model.what, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

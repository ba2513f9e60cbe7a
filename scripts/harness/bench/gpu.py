"""In-process image-classification throughput, side by side in one run:

  stock     TorchServe 0.12's stock `ImageClassifier` handler (PIL decode + torchvision
            transforms per image on the CPU, fp32 forward on the device)
  ours      our handler's ImageClassifier with handlers/accel.py's GPU path (JPEG decoded on the
            GPU, batched resize/normalize there, fp16, channels_last)
  raw       the bare fp16 channels_last forward pass on a ready batch: the ceiling

ResNet-50 (torchvision, random weights: speed does not depend on them), 224 px, 500×375 JPEGs
made from scikit-image's CC0 photos, batch 64 by default.

    python -m scripts.harness.bench.gpu [--device cuda] [--batch 64] [--seconds 10] [--out docs/bench]

The device machine has no Java, so this measures the handlers in-process there; the HTTP paths
are measured by `python -m scripts.harness.bench` on the CPU machine. On a CPU (`--device cpu`) it runs
the same code, slowly: tests/harness/test_bench.py does so with tiny settings."""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from handlers.accel import InferenceOptions
from handlers.classifier import ImageClassifier
from handlers.preprocess import PreprocessSpec
from handlers.spec import ArchSpec, ModelSpec

# torchvision's ImageNet preprocessing: what the stock handler hard-codes
IMAGENET_TORCHVISION = PreprocessSpec(height=224, width=224, channels=3, mean=(0.485, 0.456, 0.406),
                                      std=(0.229, 0.224, 0.225), resize="resize_center_crop", resize_shorter=256)


def jpegs(n: int, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """`n` distinct real-photo JPEGs of `size` (crops and flips of scikit-image's CC0 photos)."""
    from skimage import data as sk
    photos = [Image.fromarray(a) for a in (sk.chelsea(), sk.coffee(), sk.astronaut(), sk.rocket())]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        dx, dy = (i * 7) % max(1, w // 10), (i * 5) % max(1, h // 10)
        img = img.crop((dx, dy, w - dx // 2, h - dy // 2)).resize(size, Image.Resampling.BILINEAR)
        if (i // len(photos)) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def stock_handler(net: torch.nn.Module, device: torch.device, labels: list[str]):
    """TorchServe's own ImageClassifier, set up as its initialize() would leave it. Its module
    imports captum for explanations only; where captum is not installed an empty stand-in is
    registered so the inference path (the one timed) can be imported unchanged."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        captum = types.ModuleType("captum")
        captum.attr = types.ModuleType("captum.attr")
        captum.attr.IntegratedGradients = None
        sys.modules.update({"captum": captum, "captum.attr": captum.attr})
    from ts.torch_handler.image_classifier import ImageClassifier as StockImageClassifier

    handler = StockImageClassifier()
    handler.model, handler.device, handler.context = net.to(device).eval(), device, None
    handler.mapping = {str(i): label for i, label in enumerate(labels)}
    handler.initialized = True

    def run(batch: list[bytes]) -> list[dict]:
        data = handler.preprocess([{"body": b} for b in batch])
        return handler.postprocess(handler.inference(data))
    return run


def throughput(run, batch, seconds: float, warmup: int, device: torch.device) -> dict:
    for _ in range(warmup):
        run(batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not times:
        t0 = time.perf_counter()
        run(batch)
        sync()
        times.append(time.perf_counter() - t0)
    n = len(batch) if isinstance(batch, list) else batch.shape[0]
    return {"images_per_s": round(n * len(times) / sum(times), 1), "batches": len(times),
            "batch_ms_p50": round(1e3 * float(np.median(times)), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50", help="a torchvision classification model name")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per path")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches per path first")
    p.add_argument("--precision", default=None, help="ours and raw: fp16 (GPU default), bf16, fp32 (CPU default)")
    p.add_argument("--compile", action="store_true", help="torch.compile our path and the raw forward")
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench-gpu: error: --device cuda but torch sees no GPU (use --device cpu to try the code)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    images = jpegs(args.batch)
    labels = [f"class {i}" for i in range(1000)]
    net = torchvision.models.get_model(args.arch, weights=None, num_classes=len(labels)).eval()
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    spec = ModelSpec(name=args.arch, version="1", labels=tuple(labels), preprocess=IMAGENET_TORCHVISION,
                     arch=ArchSpec(module="torchvision", cls=args.arch))
    ours = ImageClassifier(net, spec, options=InferenceOptions(
        device=str(device), precision=precision, channels_last=True, tensor_decode=True, compile=args.compile))
    dtype, results = ours.options.dtype, {}

    results["stock"] = throughput(stock_handler(torchvision.models.get_model(args.arch, weights=None, num_classes=1000),
                                                device, labels), images, args.seconds, args.warmup, device)
    results["ours"] = throughput(ours.predict, images, args.seconds, args.warmup, device)
    ready = torch.randn(args.batch, 3, 224, 224, device=device).to(dtype).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def raw(x):
        return ours.forward(x)
    results["raw"] = throughput(raw, ready, args.seconds, args.warmup, device)
    ratios = {"ours_x_stock": round(results["ours"]["images_per_s"] / results["stock"]["images_per_s"], 2),
              "ours_x_raw": round(results["ours"]["images_per_s"] / results["raw"]["images_per_s"], 3)}
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m scripts.harness.bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "torchvision": torchvision.__version__, "arch": args.arch,
              "batch": args.batch, "image": "500x375 JPEG, quality 90", "ours": ours.options.describe(),
              "results": results, "ratios": ratios,
              "targets": {"ours ≥ 20× stock": ratios["ours_x_stock"] >= 20, "ours ≥ 0.5× raw fp16": ratios["ours_x_raw"] >= 0.5}}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu" if device.type == "cuda" else "gpu-path-on-cpu"
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# In-process handler throughput: {record['device']}", "",
             f"- date: {record['date']}", f"- command: `{record['command']}`",
             f"- {args.arch}, batch {args.batch}, {record['image']}; torch {torch.__version__}; ours: {record['ours']}", "",
             "| path | images/s | batch ms (p50) | batches timed |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['images_per_s']} | {v['batch_ms_p50']} | {v['batches']} |" for k, v in results.items()]
    lines += ["", f"ours / stock = **{ratios['ours_x_stock']}×** (target ≥ 20×); ours / raw = "
              f"**{ratios['ours_x_raw']}** (target ≥ 0.5)", ""]
    (args.out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

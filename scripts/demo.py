"""The whole chain on the embedded data: train (quick recipe) → evaluate → archive → serve →
predict real test images → show metrics → stop. Exits non-zero if any step fails."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import requests

from PIL import Image
from skimage import data as skdata

from model import data, evaluate, imagenet, train
from scripts.serve import archive
from scripts.client.predict import PredictError, predict
from handlers.metrics import PREDICTIONS, REJECTED
from handlers.settings import ServingSettings
from scripts.serve.settings import DEFAULT_CHECKPOINT, DEFAULT_MODEL, METRIC_LATENCY_US, METRIC_REQUESTS_TOTAL
from scripts.serve.torchserve import TorchServe, TorchServeError


def step(title: str) -> float:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)
    return time.perf_counter()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--run-dir", type=Path, default=DEFAULT_CHECKPOINT.parent)
    p.add_argument("--build-dir", type=Path, default=Path("build"))
    p.add_argument("--model-name", default=DEFAULT_MODEL)
    p.add_argument("--imagenet-name", default="imagenet")
    p.add_argument("--epochs", type=int, default=None, help="override the quick recipe's epochs")
    args = p.parse_args(argv)
    started = time.perf_counter()
    ckpt = args.run_dir / "model.pt"
    store, samples_dir = args.build_dir / "serve", args.build_dir / "samples"

    step("train (quick recipe)")
    train.main(["--data-dir", str(args.data_dir), "--output-dir", str(args.run_dir)]
               + (["--epochs", str(args.epochs)] if args.epochs else []))
    step("evaluate")
    evaluate.main(["--checkpoint", str(ckpt), "--data-dir", str(args.data_dir)])
    step("archive: the custom model and the ImageNet EfficientNet-Lite0, side by side")
    imagenet_ckpt = Path("runs/imagenet/model.pt")
    if imagenet.main(["--output", str(imagenet_ckpt)]) != 0:
        raise archive.ArchiveError("could not package the ImageNet model")
    mar, config = archive.archive(ckpt, store, args.model_name)
    mar2, _ = archive.archive(imagenet_ckpt, store, args.imagenet_name)
    print(f"archives: {mar}, {mar2}\nconfig:   {config}")
    samples = data.export_samples(data.load(DEFAULT_MODEL, args.data_dir, train=False), samples_dir)
    Image.fromarray(skdata.chelsea()).save(samples_dir / "chelsea.jpg", quality=92)
    print(f"{len(samples)} real test images and a cat photo written to {samples_dir}")

    step("serve")
    settings = ServingSettings.from_env()
    ts = TorchServe(store, settings, args.build_dir / "run-demo")
    ts.run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ts.start()
    try:
        print(f"TorchServe ready in {time.perf_counter() - t0:.1f} s at {settings.inference_url}")
        step("predict real test images over REST")
        correct = 0
        print(f"{'image':28} {'true label':12} {'predicted':12} probability")
        for s in samples:
            top = predict(samples_dir / s["file"], args.model_name, settings.inference_url)
            label, prob = next(iter(top.items()))
            correct += label == s["label"]
            print(f"{s['file']:28} {s['label']:12} {label:12} {prob:.4f} {'ok' if label == s['label'] else 'WRONG'}")
        print(f"{correct}/{len(samples)} correct")
        top = predict(samples_dir / "chelsea.jpg", args.imagenet_name, settings.inference_url)
        print(f"\nchelsea.jpg (a cat) through '{args.imagenet_name}': " +
              ", ".join(f"{label} {p:.3f}" for label, p in list(top.items())[:3]))
        step("metrics")
        text = requests.get(settings.metrics_url, timeout=10).text
        print(f"Prometheus metrics: {settings.metrics_url}")
        for line in text.splitlines():
            if line.startswith((METRIC_REQUESTS_TOTAL, METRIC_LATENCY_US, PREDICTIONS, REJECTED)):
                print(f"  {line}")
    finally:
        step("stop")
        ts.stop()
        print("TorchServe stopped")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TorchServeError, PredictError, archive.ArchiveError, data.DatasetNotFound,
            requests.RequestException) as e:
        print(f"\ndemo: error: {e}", file=sys.stderr)
        sys.exit(1)

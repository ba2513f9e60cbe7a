"""Per-channel mean/std on the 0..1 scale of a dataset's training images, streamed one image at a
time (a 256-bin histogram per channel, so the sums are exact): the numbers a PreprocessSpec needs.

    python -m model.stats --dataset fashion-mnist          # mean (0.2860,) std (0.3530,)
    python -m model.stats --image-folder photos --manifest split.json --output stats.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, to_model_mode
from model import data, split

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CHUNK = 1 << 20  # pixels per bincount call: bounded memory for large photos


def _histograms(arr: np.ndarray, hist: np.ndarray) -> None:
    flat = arr.reshape(-1, hist.shape[0])
    for start in range(0, len(flat), CHUNK):
        for c in range(hist.shape[0]):
            hist[c] += np.bincount(flat[start:start + CHUNK, c], minlength=256)


def channel_stats(images: Iterable[Image.Image], channels: int | None = None,
                  total: int | None = None) -> dict:
    """Mean and (population) std per channel over all pixels of `images`, each converted to 1 (L) or
    `channels` 3 (RGB) channels the way serving converts (default: 1 if the first image is gray)."""
    hist: np.ndarray | None = None
    spec: PreprocessSpec | None = None
    count = 0
    for img in tqdm(images, total=total, desc="channel stats", unit="img", mininterval=1):
        if spec is None:
            channels = channels or (1 if img.mode in GRAY_MODES else 3)
            spec = PreprocessSpec(height=1, width=1, channels=channels, mean=(0.0,) * channels,
                                  std=(1.0,) * channels)
            hist = np.zeros((channels, 256), dtype=np.int64)
        _histograms(np.asarray(to_model_mode(img, spec), dtype=np.uint8), hist)
        count += 1
    if hist is None:
        raise ValueError("no images to compute statistics over")
    levels = np.arange(256, dtype=np.float64) / 255.0
    pixels = int(hist[0].sum())
    mean = hist @ levels / pixels
    var = np.maximum(hist @ (levels ** 2) / pixels - mean ** 2, 0.0)
    return {"channels": int(hist.shape[0]), "images": count, "pixels": pixels,
            "mean": [round(float(m), 6) for m in mean], "std": [round(math.sqrt(v), 6) for v in var]}


def _tuple(values: Sequence[float]) -> str:
    """(0.2860,) / (0.4914, 0.4822, 0.4465): ready to paste into a PreprocessSpec."""
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ("," if len(values) == 1 else "") + ")"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Per-channel mean/std (0..1) of the training images",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_source_args(p)
    p.add_argument("--manifest", type=Path, help="use only this split manifest's train items")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 if the first image is gray")
    p.add_argument("--output", type=Path, help="also write the result as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    try:
        ds = data.source_from_args(args, train=True)
        if args.manifest:
            ds = split.apply_manifest(ds, split.read_manifest(args.manifest))["train"]
        n = min(len(ds), args.limit or len(ds))
        result = channel_stats(itertools.islice(data.pil_images(ds), n), args.channels, total=n)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    result["source"] = data.describe_source(args) | ({"manifest": str(args.manifest)} if args.manifest else {})
    print(f"mean {_tuple(result['mean'])} std {_tuple(result['std'])} over {result['images']} images "
          f"({result['pixels']} pixels, {result['channels']} channel(s))")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

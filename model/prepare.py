"""The DVC pipeline's first stage (dvc.yaml): unpack Fashion-MNIST's IDX files from the Debian
package `dataset-fashion-mnist` into a data folder that DVC caches and pushes, and check that
torchvision reads both splits whole.

    python -m model.prepare --source /usr/share/datasets/fashion-mnist --out data/pipeline
"""
from __future__ import annotations

import argparse
from pathlib import Path

from model import data

# The official splits: a truncated or foreign file fails here, not three stages later.
EXPECTED = {"train": 60_000, "test": 10_000}


def prepare(source: Path, out: Path) -> dict[str, int]:
    data.ensure_fashion_mnist(out, source)
    counts = {part: len(data.load("fashion-mnist", out, train=part == "train")) for part in EXPECTED}
    if counts != EXPECTED:
        raise SystemExit(f"prepare: {source} holds {counts} images, expected {EXPECTED}")
    return counts


def main(argv=None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=data.DEBIAN_FASHION_MNIST,
                   help="folder of the four .gz IDX files (default: the Debian package's, or $FASHION_MNIST_DIR)")
    p.add_argument("--out", type=Path, required=True, help="data folder: <out>/FashionMNIST/raw")
    args = p.parse_args(argv)
    counts = prepare(args.source, args.out)
    print(f"prepared {args.out / 'FashionMNIST' / 'raw'}: {counts['train']} train / {counts['test']} test images")
    return counts


if __name__ == "__main__":
    main()

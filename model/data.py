"""Datasets. Fashion-MNIST is the embedded default: torchvision's real FashionMNIST loader reads
the IDX files that the Debian package `dataset-fashion-mnist` ships (no download at run time)."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import torch
from torchvision import datasets

DEBIAN_FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DatasetNotFound(FileNotFoundError):
    pass


def ensure_fashion_mnist(data_dir: Path, source: Path = DEBIAN_FASHION_MNIST) -> Path:
    """Make <data_dir>/FashionMNIST/raw hold the uncompressed IDX files torchvision reads,
    unpacking them from `source` (the Debian package's folder) when missing."""
    raw = Path(data_dir) / "FashionMNIST" / "raw"
    missing = [f for f in IDX_FILES if not (raw / f).exists()]
    if not missing:
        return raw
    if not all((source / f"{f}.gz").exists() for f in missing):
        raise DatasetNotFound(
            f"Fashion-MNIST not found: {raw} lacks {', '.join(missing)} and {source} has no .gz "
            f"copies. Install the Debian package 'dataset-fashion-mnist' (make demo does), set "
            f"FASHION_MNIST_DIR, or pass --download where the internet is reachable.")
    raw.mkdir(parents=True, exist_ok=True)
    for f in missing:
        with gzip.open(source / f"{f}.gz", "rb") as src, open(raw / f"{f}.tmp", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (raw / f"{f}.tmp").rename(raw / f)
    return raw


def load_fashion_mnist(data_dir: Path, train: bool, download: bool = False) -> datasets.FashionMNIST:
    if not download:
        ensure_fashion_mnist(data_dir)
    return datasets.FashionMNIST(root=str(data_dir), train=train, download=download)


LOADERS = {"fashion-mnist": load_fashion_mnist}


def load(name: str, data_dir: Path, train: bool, download: bool = False):
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(LOADERS)}")
    return LOADERS[name](Path(data_dir), train=train, download=download)


def pil_images(ds):
    """The dataset's images as PIL, in order (torchvision datasets return (image, label))."""
    return (ds[i][0] for i in range(len(ds)))


def labels_tensor(ds) -> torch.Tensor:
    return torch.as_tensor(ds.targets, dtype=torch.long)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def export_samples(ds, out_dir: Path, per_class: int = 1) -> list[dict]:
    """Write the first `per_class` test images of each class as PNG files plus samples.json
    (file, index, label): real images for the demo, the tests and the clients."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    samples = []
    for index, target in enumerate(labels_tensor(ds).tolist()):
        if counts.get(target, 0) >= per_class:
            continue
        counts[target] = counts.get(target, 0) + 1
        label = ds.classes[target]
        name = f"{index:05d}_{slug(label)}.png"
        ds[index][0].save(out_dir / name)
        samples.append({"file": name, "index": index, "label": label})
        if len(counts) == len(ds.classes) and all(v >= per_class for v in counts.values()):
            break
    (out_dir / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
    return samples

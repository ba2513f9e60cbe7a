"""Stratified train/val/test splits with a seed, written as a manifest (JSON) that names every item
(file paths for folder/CSV data, indices for torchvision sets) so the same split can be read back.

    python -m model.split --image-folder photos --fractions 0.8 0.1 0.1 --seed 0 --output manifest.json
    python -m model.split --dataset fashion-mnist --classes Sneaker Sandal --fractions 0.9 0.1 0 \\
        --output runs/split.json
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from model import data

SPLITS = ("train", "val", "test")
VERSION = 1


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not 0 <= f <= 1 for f in fractions) or not math.isclose(
            sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions for {'/'.join(SPLITS)} must be three numbers in 0..1 that sum "
                         f"to 1, got {list(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items by fractions, sizes summing to n (largest remainder; ties go to earlier splits)."""
    exact = [n * f for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda k: (-(exact[k] - sizes[k]), k))
    for k in by_remainder[:n - sum(sizes)]:
        sizes[k] += 1
    return sizes


def stratified_split(targets: Sequence[int], fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Indices per split: each class is shuffled with `seed` and cut by `fractions`; sorted."""
    fractions = check_fractions(fractions)
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        start = 0
        for name, size in zip(SPLITS, allocate(len(members), fractions)):
            out[name] += members[start:start + size].tolist()
            start += size
    return {s: sorted(v) for s, v in out.items()}


def make_manifest(ds, fractions: Sequence[float], seed: int, source: dict | None = None) -> dict:
    ids = data.item_ids(ds)
    if len(set(ids)) != len(ids):
        raise ValueError("the dataset names some items twice; a manifest needs unique item ids")
    targets = data.labels_tensor(ds).tolist()
    split = stratified_split(targets, fractions, seed)
    return {"version": VERSION, "seed": seed, "fractions": dict(zip(SPLITS, check_fractions(fractions))),
            "classes": list(ds.classes), "source": source or {},
            "counts": {s: {ds.classes[c]: n for c, n in sorted(Counter(targets[i] for i in idx).items())}
                       for s, idx in split.items()},
            "splits": {s: [ids[i] for i in idx] for s, idx in split.items()}}


def write_manifest(manifest: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    missing = [k for k in ("version", "seed", "fractions", "classes", "splits") if k not in manifest]
    if missing or manifest["version"] != VERSION or set(manifest["splits"]) != set(SPLITS):
        raise ValueError(f"{path} is not a split manifest (version {VERSION}, splits {SPLITS})"
                         + (f": it lacks {missing}" if missing else ""))
    return manifest


def apply_manifest(ds, manifest: dict) -> dict[str, data.DatasetView]:
    """The manifest's splits of `ds`, found by item id (so the order of `ds` does not matter)."""
    if list(ds.classes) != manifest["classes"]:
        raise ValueError(f"the manifest is for classes {manifest['classes']}, the dataset has "
                         f"{list(ds.classes)} (select the same classes in the same order)")
    where: dict[Any, int] = {i: k for k, i in enumerate(data.item_ids(ds))}
    lost = [i for s in SPLITS for i in manifest["splits"][s] if i not in where]
    if lost:
        raise ValueError(f"{len(lost)} items of the manifest are not in the dataset, e.g. {lost[:5]}")
    return {s: data.DatasetView(ds, [where[i] for i in manifest["splits"][s]], ds.classes) for s in SPLITS}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a stratified train/val/test split manifest",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_source_args(p, default_dataset=None)
    p.add_argument("--part", choices=("train", "test"), default="train",
                   help="which official part of a torchvision dataset to split")
    p.add_argument("--fractions", nargs=3, type=float, default=[0.8, 0.1, 0.1],
                   metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True, help="manifest JSON to write")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    p = get_args_parser()
    args = p.parse_args(argv)
    if not (args.dataset or args.image_folder or args.csv):
        p.error("name a data source: --dataset, --image-folder or --csv")
    try:
        check_fractions(args.fractions)
        ds = data.source_from_args(args, train=args.part == "train")
        manifest = make_manifest(ds, args.fractions, args.seed, data.describe_source(args, args.part == "train"))
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    write_manifest(manifest, args.output)
    sizes = ", ".join(f"{s} {len(manifest['splits'][s])}" for s in SPLITS)
    print(f"{len(ds)} items of {len(ds.classes)} classes → {sizes}; seed {args.seed}; wrote {args.output}")
    return manifest


if __name__ == "__main__":
    main()

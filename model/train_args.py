"""The training CLI's arguments and the splits they name. Training (model.train) parses them;
the report (model.report) parses the defaults again and overlays what a checkpoint recorded, to
rebuild that run's test split. Both import this module, neither imports the other for it: the
report is one of training's steps (model.train imports model.report), never the reverse."""
from __future__ import annotations

import argparse
from pathlib import Path

from model import data, nets, split


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """Every flag of `python -m model.train`, with its default."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_source_args(p)
    d = p.add_argument_group("splits and preprocessing")
    d.add_argument("--manifest", type=Path, help="train/val/test split manifest (python -m model.split)")
    d.add_argument("--val-fraction", type=float, default=0.0,
                   help="without a manifest: hold out this stratified share of the training part")
    d.add_argument("--image-size", type=int, help="input side for folder/CSV data (default: the dataset's)")
    d.add_argument("--channels", type=int, choices=(1, 3), help="1 = grayscale, 3 = RGB (folder/CSV data)")
    d.add_argument("--mean", type=float, nargs="+", help="per-channel mean (default: computed on train)")
    d.add_argument("--std", type=float, nargs="+", help="per-channel std (default: computed on train)")
    d.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    d.add_argument("--train-per-class", type=int, default=None,
                   help="use only the first N training images of each class (a class-balanced subset)")
    d.add_argument("--test-limit", type=int, default=None, help="evaluate only the first N test images")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--arch", default="small_cnn", choices=sorted(nets.ARCHS))
    m.add_argument("--width", type=int, default=16, help="base channel width of the small CNN")
    m.add_argument("--depth", type=int, default=1, help="small CNN: conv layers per stage")
    m.add_argument("--wrn-depth", type=int, default=16, help="wide_resnet: total depth, 6n + 4 (WRN-d-k's d)")
    m.add_argument("--widen", type=int, default=8, help="wide_resnet: widening factor (WRN-d-k's k)")
    m.add_argument("--dropout", type=float, default=0.0, help="wide_resnet: dropout inside each block")
    m.add_argument("--flip-tta", action="store_true",
                   help="small CNN, wide_resnet: evaluate (and serve) on the mean logits of the image and its mirror")
    m.add_argument("--pretrained", action="store_true",
                   help="start from ImageNet weights (efficientnet_lite and the torchvision backbones; "
                        "local files, see model/pretrained.py, or --download); the head is new")
    m.add_argument("--freeze-epochs", type=int, default=0,
                   help="two-stage fine-tuning: train only the head for the first K epochs (backbone "
                        "frozen, its batch-norm statistics too), then everything")
    m.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="backbone learning rate = lr × this (default 0.1 with --freeze-epochs, else 1)")
    m.add_argument("--bn-momentum", type=float, default=0.1,
                   help="batch-norm running-statistics momentum while training (PyTorch's default; the "
                        "TF-derived EfficientNet/MobileNet layers ship 0.01, too slow to track a short run)")
    m.add_argument("--epochs", type=int, default=3)
    m.add_argument("--batch-size", type=int, default=128)
    m.add_argument("--opt", choices=("adamw", "sgd"), default="adamw")
    m.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    m.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    m.add_argument("--weight-decay", type=float, default=5e-4)
    m.add_argument("--sched", choices=("onecycle", "cosine"), default="onecycle")
    m.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up before cosine decay")
    m.add_argument("--label-smoothing", type=float, default=0.0)
    m.add_argument("--clip-grad-norm", type=float, default=None)
    m.add_argument("--augment", nargs="?", const="auto", default=None, choices=("auto", *data.augment_presets()),
                   help="training augmentation preset (model/data.py DATASETS; photos: folder/CSV data); "
                        "alone: the data's own. "
                        + "; ".join(f"{n}: {p.summary()}" for n, p in data.augment_presets().items())
                        + ". Helps long runs; slows the 3-epoch quick recipe's convergence")
    m.add_argument("--random-erasing", type=float, default=None, metavar="P",
                   help="erase one random rectangle per image with probability P (adds to --augment)")
    m.add_argument("--rotation", type=float, default=None, metavar="DEG", help="random rotation within ±DEG")
    m.add_argument("--crop-scale", type=float, default=None, metavar="MIN",
                   help="random resized crop keeping MIN..1 of the area (0 < MIN ≤ 1)")
    m.add_argument("--color-jitter", type=float, default=None, metavar="S",
                   help="brightness, contrast and saturation each scaled within 1 ± S")
    m.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    m.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    m.add_argument("--monitor", choices=("accuracy", "macro_f1"), default="accuracy",
                   help="validation metric that selects the best epoch and drives early stopping")
    m.add_argument("--patience", type=int, default=None, help="stop after N epochs without improvement")
    r = p.add_argument_group("run")
    r.add_argument("--resume", type=Path, help="continue from a last.pt training state")
    r.add_argument("--stop-after-epoch", type=int, default=None,
                   help="end this run after epoch N, keeping the --epochs schedule (resume later)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    r.add_argument("--output-dir", type=Path, default=Path("runs/fashion-mnist"))
    r.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the evaluation report (python -m model.report) after training")
    r.add_argument("--no-timings", dest="timings", action="store_false",
                   help="leave the training time out of model.pt and eval.json: the same seed then "
                        "writes byte-identical files (the DVC pipeline compares outputs by hash)")
    r.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the local ./mlruns store)")
    r.add_argument("--experiment", default=None, help="MLflow experiment (default: the data source's name)")
    r.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not track the run")
    r.add_argument("--registered-model", default=None,
                   help="the tracked run's checkpoint becomes a new version of this registered model "
                        "(default: the experiment's name)")
    r.add_argument("--no-register", dest="register", action="store_false",
                   help="track the run but register no model version")
    return p


def limit(ds, n: int | None):
    return ds if not n or n >= len(ds) else data.DatasetView(ds, range(n), ds.classes)


def per_class(ds, n: int | None):
    """The first n items of each class, in dataset order."""
    if not n:
        return ds
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(data.labels_tensor(ds).tolist()):
        seen[t] = seen.get(t, 0) + 1
        if seen[t] <= n:
            keep.append(i)
    return data.DatasetView(ds, keep, ds.classes)


def load_splits(args) -> tuple:
    """(train, val or None, test): from a manifest, or the torchvision train/test parts."""
    if not args.manifest and not args.dataset:
        raise SystemExit("folder and CSV data have no test part: write a split with python -m model.split "
                         "and pass --manifest")
    if args.manifest:
        parts = split.apply_manifest(data.source_from_args(args, train=True), split.read_manifest(args.manifest))
        train = limit(per_class(parts["train"], args.train_per_class), args.train_limit)
        return train, parts["val"] or None, limit(parts["test"], args.test_limit)
    train, test = data.source_from_args(args, train=True), data.source_from_args(args, train=False)
    train, val = limit(per_class(train, args.train_per_class), args.train_limit), None
    if args.val_fraction:
        cut = split.stratified_split(data.labels_tensor(train).tolist(),
                                     (1 - args.val_fraction, args.val_fraction, 0.0), args.seed)
        train, val = (data.DatasetView(train, cut[s], train.classes) for s in ("train", "val"))
    return train, val, limit(test, args.test_limit)

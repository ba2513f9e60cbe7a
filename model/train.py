"""Train an image classifier.

The default is the quick Fashion-MNIST recipe (small CNN, AdamW, one-cycle schedule, 3 epochs):
≥ 90% test accuracy in under 2 minutes on 2 CPU cores.

    python -m model.train --output-dir runs/fashion-mnist
    python -m model.train --image-folder DIR --manifest split.json --image-size 64 --epochs 20 \\
        --opt sgd --sched cosine --warmup-epochs 1 --patience 5 --output-dir runs/mine
    python -m model.train --arch efficientnet_lite --pretrained --freeze-epochs 2 --image-size 64 \
        --channels 3 --train-per-class 300 --epochs 10 --sched cosine --lr 3e-3   # transfer learning

Writes <output-dir>/model.pt (the selected model: best validation epoch when there is a
validation split, else the last), last.pt (full training state, for --resume) and eval.json
(test metrics of model.pt).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, normalize
from model import checkpoint, data, evaluate, nets, presets, pretrained, split, stats, tracking
from model.utils import pick_device, seed_everything, set_threads


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    m.add_argument("--augment", nargs="?", const="auto", default=None, choices=("auto", *presets.TRAIN_PRESETS),
                   help="training augmentation preset (model/presets.py TRAIN_PRESETS); alone: the data's "
                        "own (fashion-mnist: shift + flip; mnist: shift + rotation; cifar-10: shift, flip, "
                        "jitter; folder/CSV photos: random resized crop, flip, jitter). Helps long runs; "
                        "slows the 3-epoch quick recipe's convergence")
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
    r.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the local ./mlruns store)")
    r.add_argument("--experiment", default=None, help="MLflow experiment (default: the data source's name)")
    r.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not track the run")
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


def preprocess_spec(args, train) -> PreprocessSpec:
    custom = args.image_size or args.channels or args.mean or args.std or not args.dataset or args.pretrained
    if not custom:
        return presets.DATASET_SPECS[args.dataset]
    base = presets.DATASET_SPECS.get(args.dataset) if args.dataset else None
    size = args.image_size or (base.height if base else 64)
    channels = args.channels or (base.channels if base else 3)
    if args.mean and args.std:
        mean, std = args.mean, args.std
    elif args.pretrained:  # the statistics the ImageNet weights were trained with
        mean, std = pretrained.normalization(args.arch, channels)
    else:
        measured = stats.channel_stats(data.pil_images(train), channels, total=len(train))
        mean, std = measured["mean"], measured["std"]
    return PreprocessSpec(height=size, width=size, channels=channels, mean=tuple(mean), std=tuple(std))


def to_tensors(ds, spec: PreprocessSpec, name: str):
    if ds is None:
        return None, None
    x = presets.images_to_uint8(data.pil_images(ds), spec, desc=f"preprocess {name}")
    return x, data.labels_tensor(ds)


def backbone_lr_scale(args) -> float:
    if args.backbone_lr_scale is not None:
        return args.backbone_lr_scale
    return 0.1 if args.freeze_epochs else 1.0


def param_groups(net, args) -> list[dict]:
    """One group, or [head, backbone] when the backbone gets its own (lower) learning rate."""
    scale = backbone_lr_scale(args)
    if scale == 1.0 and not args.freeze_epochs:
        return [{"params": list(net.parameters()), "lr": args.lr}]
    named = list(net.named_parameters())
    head = [p for n, p in named if nets.is_head(args.arch, n)]
    backbone = [p for n, p in named if not nets.is_head(args.arch, n)]
    return [{"params": head, "lr": args.lr, "name": "head"},
            {"params": backbone, "lr": args.lr * scale, "name": "backbone"}]


def make_optimizer(net, args) -> torch.optim.Optimizer:
    groups = param_groups(net, args)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True,
                               weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(optimizer, args, steps_per_epoch: int):
    """One schedule over all epochs (both stages of two-stage fine-tuning); each parameter group
    follows it at its own peak learning rate."""
    total = args.epochs * steps_per_epoch
    if args.sched == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total)
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def stage(args, epoch: int) -> int:
    """Two-stage fine-tuning: 1 = head only (epochs 1..freeze_epochs), 2 = everything."""
    return 1 if epoch <= args.freeze_epochs else 2


def set_stage(net, arch: str, frozen: bool, bn_momentum: float | None = None) -> None:
    """Training mode; with `frozen`, the backbone's parameters take no gradient (the optimizer
    skips them, weight decay included) and its batch-norm layers keep their running statistics."""
    net.train()
    for name, param in net.named_parameters():
        param.requires_grad_(not frozen or nets.is_head(arch, name))
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if bn_momentum is not None:  # a module attribute, not saved: evaluation is unaffected
                module.momentum = bn_momentum
            if frozen and not nets.is_head(arch, name):
                module.eval()


def train_preset(args) -> presets.TrainPreset | None:
    """--augment's preset (the data's own for `auto`) with the single-transform flags over it."""
    overrides = {field: value for field, value in (("erasing", args.random_erasing), ("rotation", args.rotation),
                                                   ("crop_scale", args.crop_scale), ("jitter", args.color_jitter))
                 if value is not None}
    if args.augment is None and not overrides:
        return None
    name = args.augment
    if name == "auto":
        name = args.dataset if args.dataset in presets.TRAIN_PRESETS else "photos"
    preset = dataclasses.replace(presets.TRAIN_PRESETS[name] if name else presets.TrainPreset(), **overrides)
    if not 0 <= preset.erasing <= 1:
        raise ValueError(f"--random-erasing {preset.erasing}: a probability, 0..1")
    if preset.crop_scale is not None and not 0 < preset.crop_scale <= 1:
        raise ValueError(f"--crop-scale {preset.crop_scale}: the smallest area share kept, 0 < MIN ≤ 1")
    if preset.rotation < 0 or not 0 <= preset.jitter < 1:
        raise ValueError(f"--rotation must be ≥ 0 and --color-jitter in [0, 1) (got {preset.rotation}, "
                         f"{preset.jitter})")
    return preset


def train_one_epoch(net, optimizer, scheduler, x, y, spec, args, device, gen, epoch,
                    augment: presets.TrainPreset | None = None) -> float:
    set_stage(net, args.arch, frozen=stage(args, epoch) == 1, bn_momentum=args.bn_momentum)
    order = torch.randperm(len(x), generator=gen)
    steps = math.ceil(len(x) / args.batch_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and device.type == "cuda" else nullcontext()
    total, seen, start = 0.0, 0, time.perf_counter()
    desc = f"epoch {epoch}/{args.epochs}" + (f" (stage {stage(args, epoch)})" if args.freeze_epochs else "")
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        batch = x[idx]
        if augment is not None:
            batch = augment(batch, spec, generator=gen)
        inputs, targets = normalize(batch, spec).to(device), y[idx].to(device)
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(net(inputs), targets, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    return total / seen


@dataclass
class Progress:
    """What a resumed run continues from (saved in last.pt)."""

    history: list = field(default_factory=list)
    best: dict | None = None  # {"score", "epoch"} of the best validation epoch
    stale: int = 0  # epochs since the best one
    train_seconds: float = 0.0


@dataclass
class Run:
    args: argparse.Namespace
    net: torch.nn.Module
    arch_kwargs: dict
    optimizer: torch.optim.Optimizer
    scheduler: object
    spec: PreprocessSpec
    labels: list[str]
    gen: torch.Generator
    device: torch.device
    tensors: dict  # x_train, y_train, x_val, y_val, x_test, y_test
    source: dict
    progress: Progress = field(default_factory=Progress)
    next_epoch: int = 1
    test_ds: object = None  # the test split's raw images, for the report's latency sample
    augment: presets.TrainPreset | None = None

    def save(self, name: str, epoch: int, metrics: dict, **extra) -> Path:
        a = self.args
        return checkpoint.save(a.output_dir / name, self.net, arch=a.arch, arch_kwargs=self.arch_kwargs,
                               labels=self.labels, spec=self.spec, args=vars(a), epoch=epoch,
                               metrics=metrics, **extra)

    def resume(self, path: Path) -> None:
        state = checkpoint.load(path)
        self.net.load_state_dict(state["state_dict"])
        t = state["train_state"]
        self.optimizer.load_state_dict(t["optimizer"])
        self.scheduler.load_state_dict(t["scheduler"])
        self.gen.set_state(t["generator"])
        torch.set_rng_state(t["torch_rng"])
        self.progress = Progress(**t["progress"])
        self.next_epoch = state["epoch"] + 1
        saved = t.get("stage", {"freeze_epochs": 0, "backbone_lr_scale": 1.0})
        wanted = {"freeze_epochs": self.args.freeze_epochs, "backbone_lr_scale": backbone_lr_scale(self.args)}
        if {k: saved[k] for k in wanted} != wanted:
            raise SystemExit(f"--resume {path}: that run was trained with {saved}; pass the same "
                             f"--freeze-epochs/--backbone-lr-scale (got {wanted})")
        print(f"resumed from {path} after epoch {state['epoch']}"
              + (f" (stage {saved['stage']}; epoch {self.next_epoch} is stage {stage(self.args, self.next_epoch)})"
                 if "stage" in saved else ""))

    def validate(self, epoch: int, row: dict) -> None:
        a, p, t = self.args, self.progress, self.tensors
        m = evaluate.evaluate(self.net, t["x_val"], t["y_val"], self.spec, self.labels, device=self.device)
        row.update(val_accuracy=round(m["accuracy"], 5), val_macro_f1=round(m["macro_f1"], 5))
        score = m[a.monitor]
        if p.best is None or score > p.best["score"]:
            p.best, p.stale = {"score": score, "epoch": epoch}, 0
            self.save("best.pt", epoch, {f"val_{a.monitor}": score})
        else:
            p.stale += 1
        print(f"epoch {epoch}: val {a.monitor} {score:.4f} (best {p.best['score']:.4f} at epoch {p.best['epoch']})")

    def fit(self, tracker) -> dict:
        """The epochs (validation, best-epoch selection, early stopping, resumable state), then
        the test evaluation, the report and the tracked artifacts."""
        a, p, t = self.args, self.progress, self.tensors
        for epoch in range(self.next_epoch, a.epochs + 1):
            start = time.perf_counter()
            loss = train_one_epoch(self.net, self.optimizer, self.scheduler, t["x_train"], t["y_train"],
                                   self.spec, a, self.device, self.gen, epoch, self.augment)
            p.train_seconds += time.perf_counter() - start
            row = {"epoch": epoch, "train_loss": round(loss, 5)}
            if t["x_val"] is not None:
                self.validate(epoch, row)
            p.history.append(row)
            tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            self.save("last.pt", epoch, {}, train_state={
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "progress": dataclasses.asdict(p),
                "stage": {"stage": stage(a, epoch), "freeze_epochs": a.freeze_epochs,
                          "backbone_lr_scale": backbone_lr_scale(a)}})
            if a.patience is not None and p.stale >= a.patience:
                print(f"early stop: no {a.monitor} improvement for {p.stale} epochs")
                break
            if a.stop_after_epoch and epoch >= a.stop_after_epoch:
                print(f"stopping after epoch {epoch}: continue with --resume {a.output_dir / 'last.pt'}")
                break
        return self.finish(tracker)

    def finish(self, tracker) -> dict:
        a, p, t = self.args, self.progress, self.tensors
        if p.best is not None:  # the selected model is the best validation epoch
            self.net.load_state_dict(checkpoint.load(a.output_dir / "best.pt")["state_dict"])
        logits = evaluate.logits(self.net, t["x_test"], self.spec, device=self.device)
        metrics = evaluate.classification_metrics(t["y_test"], logits.argmax(1), self.labels)
        path = self.save("model.pt", p.best["epoch"] if p.best else p.history[-1]["epoch"],
                         {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                          "train_seconds": round(p.train_seconds, 1), "history": p.history})
        evaluate.write_report(metrics, a.output_dir / "eval.json", checkpoint=str(path), source=self.source,
                              train_seconds=round(p.train_seconds, 1))
        print(f"trained {len(p.history)} epochs in {p.train_seconds:.1f} s")
        evaluate.print_summary(metrics)
        tracker.metrics({"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                         "train_seconds": p.train_seconds})
        artifacts = [a.output_dir / "eval.json", a.manifest, a.clean_report]
        if a.report:
            from model import report  # matplotlib: only when a report is wanted
            test = report.TestSet(t["x_test"], t["y_test"], t["y_train"], report.sample_images(self.test_ds))
            r = report.build_report(path, a.output_dir, str(self.device), test=test, logits=logits)
            if "top5_accuracy" in r:
                tracker.metrics({"test_top5_accuracy": r["top5_accuracy"]})
            artifacts += [a.output_dir / f for f in ("report.json", "report.md", "confusion_matrix.png",
                                                     "training_curves.png")]
        for artifact in artifacts:
            if artifact:
                tracker.artifact(artifact)
        tracker.artifact(path, "model")
        print(f"checkpoint: {path}\nreport: {a.output_dir / ('report.md' if a.report else 'eval.json')}")
        if tracker.uri:
            print(f"MLflow run {tracker.run_id} in {tracker.uri} (browse: mlflow ui --backend-store-uri {tracker.uri})")
        return metrics


def arch_options(args, spec: PreprocessSpec) -> dict:
    """Architecture-specific constructor arguments (defaults left out, so checkpoints of the
    quick recipe keep their exact kwargs)."""
    if args.arch == "small_cnn":
        return {"width": args.width, **({"depth": args.depth} if args.depth != 1 else {}),
                **({"flip_tta": True} if args.flip_tta else {})}
    if args.arch == "wide_resnet":
        return {"depth": args.wrn_depth, "widen": args.widen, **({"dropout": args.dropout} if args.dropout else {}),
                **({"flip_tta": True} if args.flip_tta else {})}
    if args.arch in nets.TORCHVISION_HEADS:
        return {"image_size": max(spec.height, spec.width)}
    return {}


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.image_folder or args.csv:
        args.dataset = None  # --dataset has a default; another source replaces it
    if args.freeze_epochs and not 0 < args.freeze_epochs < args.epochs:
        raise SystemExit(f"--freeze-epochs must be between 1 and --epochs - 1 ({args.epochs - 1})")
    if args.pretrained and not args.resume:  # fail before the data is read, not after
        try:
            pretrained.check_available(args.arch, args.download)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"train: error: {e}") from None
    try:
        augment = train_preset(args)
    except ValueError as e:
        raise SystemExit(f"train: error: {e}") from None
    gen = seed_everything(args.seed)
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    train, val, test = load_splits(args)
    labels = list(train.classes)
    spec = preprocess_spec(args, train)
    print(f"device {device}, {threads} threads; {len(train)} train / {len(val) if val else 0} val / "
          f"{len(test)} test images, {len(labels)} classes")
    if augment is not None:
        print(f"augmentation: {augment}")
    tensors = {}
    for name, ds in (("train", train), ("val", val), ("test", test)):
        tensors[f"x_{name}"], tensors[f"y_{name}"] = to_tensors(ds, spec, name)

    arch_kwargs = nets.arch_kwargs(args.arch, num_classes=len(labels), in_channels=spec.channels,
                                   **arch_options(args, spec))
    net = nets.build(args.arch, **arch_kwargs)
    if args.pretrained and not args.resume:  # a resumed run gets its weights from last.pt
        print(f"pretrained: {pretrained.load_pretrained(net, args.arch, arch_kwargs, args.download)} "
              f"ImageNet tensors loaded into {args.arch}, new {len(labels)}-class head")
    net = net.to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, args)
    scheduler = make_scheduler(optimizer, args, math.ceil(len(tensors["x_train"]) / args.batch_size))
    run = Run(args, net, arch_kwargs, optimizer, scheduler, spec, labels, gen, device, tensors, data.describe_source(args),
              test_ds=test, augment=augment)
    if args.resume:
        run.resume(args.resume)
    experiment = args.experiment or run.source.get("dataset") or Path(args.image_folder or args.csv).stem
    with tracking.start(args.mlflow, args.mlflow_uri, experiment, run_name=args.output_dir.name) as tracker:
        tracker.params({**vars(args), "preprocess": spec.to_dict(), "augment_preset": repr(augment), "train_images": len(train),
                        "val_images": len(val) if val else 0, "test_images": len(test)})
        return run.fit(tracker)


if __name__ == "__main__":
    main()

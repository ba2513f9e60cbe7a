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
import pickle
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, normalize
from model import checkpoint, data, evaluate, nets, presets, pretrained, report, stats, tracking, train_args
from model.train_args import limit, load_splits, per_class  # noqa: F401  (the splits a run trains on)
from model.utils import pick_device, seed_everything, set_threads


def get_args_parser() -> argparse.ArgumentParser:
    """The training CLI (defined in model.train_args, which model.report reads too)."""
    return train_args.parser(description=__doc__)


def preprocess_spec(args, train) -> PreprocessSpec:
    custom = args.image_size or args.channels or args.mean or args.std or not args.dataset or args.pretrained
    if not custom:
        return data.DATASETS[args.dataset].spec
    base = data.DATASETS[args.dataset].spec if args.dataset in data.DATASETS else None
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
    named = data.augment_presets()
    if args.augment == "auto":
        base = named.get(args.dataset, data.PHOTOS)
    else:
        base = named[args.augment] if args.augment else presets.TrainPreset()
    preset = dataclasses.replace(base, **overrides)
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

    def resume(self, path: Path, state: dict | None = None) -> None:
        state = state if state is not None else resumable_state(path)
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
        best = Path(path).parent / "best.pt"
        if self.progress.best is not None and best.resolve() != (self.args.output_dir / "best.pt").resolve():
            self.args.output_dir.mkdir(parents=True, exist_ok=True)  # another folder: bring the best epoch along
            shutil.copyfile(best, self.args.output_dir / "best.pt")
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
        timing = {"train_seconds": round(p.train_seconds, 1)} if a.timings else {}
        path = self.save("model.pt", p.best["epoch"] if p.best else p.history[-1]["epoch"],
                         {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                          **timing, "history": p.history})
        evaluate.write_report(metrics, a.output_dir / "eval.json", checkpoint=str(path), source=self.source,
                              **timing)
        print(f"trained {len(p.history)} epochs in {p.train_seconds:.1f} s")
        evaluate.print_summary(metrics)
        tracker.metrics({"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                         "train_seconds": p.train_seconds})
        artifacts = [a.output_dir / "eval.json", a.manifest, a.clean_report]
        if a.report:
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
        if a.register and tracker.uri:
            version = tracker.register(a.registered_model)
            print(f"registered: models:/{a.registered_model}/{version}")
        print(f"checkpoint: {path}\nreport: {a.output_dir / ('report.md' if a.report else 'eval.json')}")
        if tracker.uri:
            print(f"MLflow run {tracker.run_id} in {tracker.uri} (browse: mlflow ui --backend-store-uri {tracker.uri})")
        return metrics


def resumable_state(path: Path) -> dict:
    """The checkpoint --resume names, refused with a CLI error unless it holds a training state
    (model.pt and best.pt hold the weights only)."""
    try:
        state = checkpoint.load(path)
    except (FileNotFoundError, ValueError) as e:  # no file; not our checkpoint format
        raise SystemExit(f"train: error: --resume {path}: {e}") from None
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise SystemExit(f"train: error: --resume {path}: not a checkpoint torch can load "
                         f"({type(e).__name__}); resume from a run's last.pt") from None
    if "train_state" not in state:
        raise SystemExit(f"train: error: --resume {path}: this checkpoint holds the model's weights only, no "
                         f"training state (optimizer, schedule, RNG, validation progress); resume from the "
                         f"run's last.pt, written after every epoch")
    best = state["train_state"]["progress"].get("best")
    if best is not None:  # the selected model may be an epoch before the resume point: its weights
        beside = Path(path).parent / "best.pt"
        saved = checkpoint.load(beside)["epoch"] if beside.is_file() else None
        if saved != best["epoch"]:
            raise SystemExit(f"train: error: --resume {path}: its best validation epoch ({best['epoch']}) is "
                             f"saved in the best.pt beside it, which is "
                             + ("missing" if saved is None else f"another epoch's ({saved})"))
    return state


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
    resume_state = resumable_state(args.resume) if args.resume else None  # before the data is read
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
                                   **nets.ARCHS[args.arch].options_from(args, max(spec.height, spec.width)))
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
    if resume_state is not None:
        run.resume(args.resume, resume_state)
    experiment = args.experiment or run.source.get("dataset") or Path(args.image_folder or args.csv).stem
    args.registered_model = args.registered_model or experiment
    with tracking.start(args.mlflow, args.mlflow_uri, experiment, run_name=args.output_dir.name) as tracker:
        tracker.params({**vars(args), "preprocess": spec.to_dict(), "augment_preset": repr(augment), "train_images": len(train),
                        "val_images": len(val) if val else 0, "test_images": len(test)})
        return run.fit(tracker)


if __name__ == "__main__":
    main()

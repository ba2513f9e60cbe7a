"""Train an image classifier. The default is the quick Fashion-MNIST recipe (small CNN, AdamW,
one-cycle schedule, 4 epochs): ≥ 90% test accuracy in under 2 minutes on 2 CPU cores.

    python -m model.train --output-dir runs/fashion-mnist
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, normalize
from model import checkpoint, data, evaluate, nets, presets
from model.utils import pick_device, seed_everything, set_threads


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train an image classifier", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(data.LOADERS))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--arch", default="small_cnn", choices=sorted(nets.ARCHS))
    p.add_argument("--width", type=int, default=16, help="base channel width of the small CNN")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action="store_true",
                   help="random shift + flip (helps long runs; slows the 4-epoch quick recipe's convergence)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--output-dir", type=Path, default=Path("runs/fashion-mnist"))
    return p


def load_split(args, train: bool, spec: PreprocessSpec):
    ds = data.load(args.dataset, args.data_dir, train=train, download=args.download)
    limit = args.train_limit if train else args.test_limit
    n = min(len(ds), limit or len(ds))
    x = presets.images_to_uint8((ds[i][0] for i in range(n)), spec,
                                desc=f"preprocess {'train' if train else 'test'}")
    return x, data.labels_tensor(ds)[:n], list(ds.classes)


def train_one_epoch(net, optimizer, scheduler, x, y, spec, args, device, gen, epoch) -> float:
    net.train()
    order = torch.randperm(len(x), generator=gen)
    steps = math.ceil(len(x) / args.batch_size)
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", unit="step")
    for step in bar:
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        batch = x[idx]
        if args.augment:
            batch = presets.train_augment(batch, generator=gen)
        inputs, targets = normalize(batch, spec).to(device), y[idx].to(device)
        loss = F.cross_entropy(net(inputs), targets, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    return total / seen


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    gen = seed_everything(args.seed)
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    spec = presets.DATASET_SPECS[args.dataset]
    print(f"device {device}, {threads} threads; dataset {args.dataset} from {args.data_dir}")

    x_train, y_train, labels = load_split(args, True, spec)
    x_test, y_test, _ = load_split(args, False, spec)
    arch_kwargs = {"num_classes": len(labels), "in_channels": spec.channels}
    if args.arch == "small_cnn":
        arch_kwargs["width"] = args.width
    net = nets.build(args.arch, **arch_kwargs).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = math.ceil(len(x_train) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps)

    start = time.perf_counter()
    history = []
    for epoch in range(1, args.epochs + 1):
        loss = train_one_epoch(net, optimizer, scheduler, x_train, y_train, spec, args, device, gen, epoch)
        history.append({"epoch": epoch, "train_loss": round(loss, 5)})
    train_seconds = time.perf_counter() - start

    metrics = evaluate.evaluate(net, x_test, y_test, spec, labels, device=device)
    path = checkpoint.save(args.output_dir / "model.pt", net, arch=args.arch, arch_kwargs=arch_kwargs,
                           labels=labels, spec=spec, args=vars(args), epoch=args.epochs,
                           metrics={"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                                    "train_seconds": round(train_seconds, 1), "history": history})
    evaluate.write_report(metrics, args.output_dir / "eval.json", checkpoint=str(path),
                          dataset=args.dataset, train_seconds=round(train_seconds, 1))
    print(f"trained {args.epochs} epochs in {train_seconds:.1f} s")
    evaluate.print_summary(metrics)
    print(f"checkpoint: {path}\nreport: {args.output_dir / 'eval.json'}")
    return metrics


if __name__ == "__main__":
    main()

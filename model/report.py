"""Evaluation report of a checkpoint on its test split: accuracy, top-5 (with many classes),
precision/recall/F1 macro and per class, a majority-class baseline, parameter count and size on
disk, in-process latency per image through the serving path, a confusion-matrix PNG and a
training-curves PNG; written as report.json + report.md beside the checkpoint.

    python -m model.report --checkpoint runs/fashion-mnist/model.pt
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from handlers.classifier import ImageClassifier
from handlers.spec import ArchSpec, ModelSpec
from model import checkpoint, data, evaluate, presets, train_args
from model.utils import pick_device, set_threads


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or in CI). Loaded when a
    plot is drawn, not when training imports this module: a GPU machine's own Python may train
    with --no-report and no matplotlib installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return float((logits.topk(k, dim=1).indices == y[:, None]).any(1).float().mean())


def latency_ms(net, spec, labels, images, device: str, repeats: int = 3) -> dict:
    """Per image, batch 1, from PNG bytes to top-k: the work a serving worker does."""
    clf = ImageClassifier(net, ModelSpec(name="report", version="0", labels=tuple(labels), preprocess=spec,
                                         arch=ArchSpec("", "")), device=device)
    bodies = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        bodies.append(buf.getvalue())
    for body in bodies[:5]:  # warm-up
        clf.predict([body])
    times = []
    for _ in range(repeats):
        for body in bodies:
            start = time.perf_counter()
            clf.predict([body])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"device": device, "images": len(times), "p50": round(statistics.median(times), 3),
            "p95": round(times[int(0.95 * (len(times) - 1))], 3)}


def plot_confusion(matrix, labels, path: Path) -> Path:
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(5, 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title("Confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(history: list[dict], path: Path) -> Path | None:
    if not history:
        return None
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    vals = [k for k in ("val_accuracy", "val_macro_f1") if k in history[0]]
    if vals:
        ax2 = ax.twinx()
        for k in vals:
            ax2.plot(epochs, [h[k] for h in history], "s--", label=k.replace("_", " "))
        ax2.set_ylabel("validation")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(r: dict) -> str:
    lines = [f"# Evaluation report: `{r['checkpoint']}`", "",
             "| metric | value |", "| --- | --- |",
             f"| test images | {r['n']} |", f"| accuracy | {r['accuracy']:.4f} |"]
    if "top5_accuracy" in r:
        lines.append(f"| top-5 accuracy | {r['top5_accuracy']:.4f} |")
    lines += [f"| macro precision / recall / F1 | {r['macro_precision']:.4f} / {r['macro_recall']:.4f} / {r['macro_f1']:.4f} |",
              f"| majority-class baseline accuracy | {r['baseline_accuracy']:.4f} ({r['baseline_class']}) |",
              f"| parameters | {r['parameters']:,} |", f"| checkpoint size | {r['checkpoint_bytes'] / 2**20:.2f} MiB |"]
    for lat in r["latency_ms"]:
        lines.append(f"| latency per image, bytes → top-k, {lat['device']} | p50 {lat['p50']} ms, p95 {lat['p95']} ms |")
    lines += ["", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
              for c, v in r["per_class"].items()]
    lines += ["", "![confusion matrix](confusion_matrix.png)"]
    if r.get("curves"):
        lines.append("![training curves](training_curves.png)")
    return "\n".join(lines) + "\n"


LATENCY_IMAGES = 50  # test images timed one at a time through the serving path


@dataclass
class TestSet:
    """What a report evaluates: the test split as uint8 tensors, raw test images for the latency
    sample, and the training labels for the majority-class baseline."""
    x: torch.Tensor
    y: torch.Tensor
    y_train: torch.Tensor
    samples: list  # PIL images


def sample_images(ds, n: int = LATENCY_IMAGES) -> list:
    return [ds[i][0] for i in range(min(n, len(ds)))]


def load_test_set(ckpt: dict, spec, latency_images: int = LATENCY_IMAGES) -> TestSet:
    """The checkpoint's run's splits again, from the arguments it recorded."""
    run_args = train_args.parser().parse_args([])  # defaults, then what the run recorded
    for k, v in ckpt["args"].items():
        setattr(run_args, k, Path(v) if k in ("data_dir", "image_folder", "csv", "csv_root", "manifest",
                                              "clean_report") and v else v)
    run_args.test_limit = ckpt["args"].get("test_limit")
    train_ds, _, test_ds = train_args.load_splits(run_args)
    x = presets.images_to_uint8(data.pil_images(test_ds), spec, desc="preprocess test")
    return TestSet(x, data.labels_tensor(test_ds), data.labels_tensor(train_ds),
                   sample_images(test_ds, latency_images))


def build_report(ckpt_path: Path, out_dir: Path | None = None, device: str = "auto",
                 latency_images: int = LATENCY_IMAGES, test: TestSet | None = None,
                 logits: torch.Tensor | None = None) -> dict:
    """The report of a checkpoint. Training passes the test set it already holds and the logits
    it already computed (one evaluation, not two); alone, the splits are loaded again."""
    ckpt_path = Path(ckpt_path)
    out_dir = Path(out_dir or ckpt_path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.load(ckpt_path)
    spec, labels, net = checkpoint.preprocess_spec(ckpt), ckpt["labels"], checkpoint.build_net(ckpt)
    dev = pick_device(device)
    test = test or load_test_set(ckpt, spec, latency_images)
    x, y = test.x, test.y
    if logits is None:
        logits = evaluate.logits(net, x, spec, device=dev)
    m = evaluate.classification_metrics(y, logits.argmax(1), labels)
    per = m["per_class"].values()
    majority = int(torch.bincount(test.y_train, minlength=len(labels)).argmax())
    r = {"checkpoint": str(ckpt_path), **{k: m[k] for k in ("n", "accuracy", "macro_f1")},
         "macro_precision": statistics.mean(v["precision"] for v in per),
         "macro_recall": statistics.mean(v["recall"] for v in per),
         "baseline_class": labels[majority], "baseline_accuracy": float((y == majority).float().mean()),
         "parameters": sum(p.numel() for p in net.parameters()), "checkpoint_bytes": ckpt_path.stat().st_size,
         "per_class": m["per_class"], "confusion_matrix": m["confusion_matrix"],
         "history": ckpt["metrics"].get("history", [])}
    if len(labels) > 5:
        r["top5_accuracy"] = topk_accuracy(logits, y, 5)
    devices = ["cpu"] + ([str(dev)] if dev.type == "cuda" else [])
    r["latency_ms"] = [latency_ms(net, spec, labels, test.samples, d) for d in devices]
    plot_confusion(m["confusion_matrix"], labels, out_dir / "confusion_matrix.png")
    r["curves"] = bool(plot_curves(r["history"], out_dir / "training_curves.png"))
    (out_dir / "report.json").write_text(json.dumps(r, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(r))
    return r


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, default=None, help="default: beside the checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--latency-images", type=int, default=LATENCY_IMAGES)
    args = p.parse_args(argv)
    set_threads(args.threads)
    r = build_report(args.checkpoint, args.output_dir, args.device, args.latency_images)
    out = args.output_dir or args.checkpoint.parent
    print(markdown(r).split("\n\n| class")[0])
    print(f"\nreport: {out / 'report.md'} (+ report.json, confusion_matrix.png, training_curves.png)")
    return r


if __name__ == "__main__":
    main()

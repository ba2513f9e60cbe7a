"""Evaluate a checkpoint on a dataset's test split through the serving preprocessing:
accuracy and macro-F1 (plus per-class precision/recall/F1), printed and written as JSON
next to the checkpoint."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from handlers.preprocess import PreprocessSpec, normalize
from model import checkpoint, data, presets
from model.utils import pick_device, set_threads


@torch.inference_mode()
def logits(net: torch.nn.Module, x_uint8: torch.Tensor, spec: PreprocessSpec,
           batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, C, H, W] → float32 logits [N, classes] on the CPU."""
    net = net.to(device).eval()
    out = []
    for start in tqdm(range(0, len(x_uint8), batch_size), desc="evaluate", unit="batch", leave=False):
        batch = normalize(x_uint8[start:start + batch_size], spec).to(device)
        out.append(net(batch).float().cpu())
    return torch.cat(out)


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, labels: list[str]) -> dict:
    k = len(labels)
    confusion = torch.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).double()
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / confusion.sum()),
        "macro_f1": float(f1.mean()),
        "per_class": {label: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                              "f1": round(float(f), 4), "support": int(s)}
                      for label, p, r, f, s in zip(labels, precision, recall, f1, confusion.sum(1))},
        "confusion_matrix": confusion.long().tolist(),
    }


def evaluate(net, x_uint8, y, spec, labels, batch_size=512, device="cpu") -> dict:
    return classification_metrics(y, logits(net, x_uint8, spec, batch_size, device).argmax(1), labels)


def write_report(metrics: dict, path: Path, **extra) -> Path:
    path = Path(path)
    path.write_text(json.dumps({**extra, **metrics}, indent=2) + "\n")
    return path


HEADLINE = ("n", "accuracy", "macro_f1")  # what --metrics writes


def print_summary(metrics: dict) -> None:
    print(f"test accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
          f"(n={metrics['n']})")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--output", type=Path, default=None, help="default: eval.json next to the checkpoint")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-timings", dest="timings", action="store_false",
                   help="leave the evaluation time out of the JSON: the same checkpoint then writes a "
                        "byte-identical file (the DVC pipeline compares outputs by hash)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="also write n, accuracy and macro-F1 alone, as flat JSON, here (the DVC pipeline's "
                        "metrics file: `dvc metrics show` lists every number of the file it is given)")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    ckpt = checkpoint.load(args.checkpoint)
    name = args.dataset or ckpt["args"]["dataset"]
    spec = checkpoint.preprocess_spec(ckpt)
    test = data.load(name, args.data_dir, train=False)
    start = time.perf_counter()
    x = presets.images_to_uint8(data.pil_images(test), spec, desc="preprocess test")
    metrics = evaluate(checkpoint.build_net(ckpt), x, data.labels_tensor(test), spec, ckpt["labels"],
                       args.batch_size, pick_device(args.device))
    timing = {"seconds": round(time.perf_counter() - start, 2)} if args.timings else {}
    out = write_report(metrics, args.output or args.checkpoint.parent / "eval.json",
                       checkpoint=str(args.checkpoint), dataset=name, **timing)
    if args.metrics:
        args.metrics.write_text(json.dumps({k: metrics[k] for k in HEADLINE}, indent=2) + "\n")
    print_summary(metrics)
    print(f"report: {out}")
    return metrics


if __name__ == "__main__":
    main()

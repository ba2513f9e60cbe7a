"""Checkpoint format: weights plus everything needed to rebuild, evaluate and serve the model
(architecture, label names, preprocessing spec, the training args). Loads under torch's
weights_only=True: only tensors and plain Python values are stored."""
from __future__ import annotations

from pathlib import Path

import torch

from handlers.preprocess import PreprocessSpec
from model import nets

FORMAT = 1


def save(path: Path, net: torch.nn.Module, *, arch: str, arch_kwargs: dict, labels: list[str],
         spec: PreprocessSpec, args: dict, epoch: int, metrics: dict | None = None,
         train_state: dict | None = None) -> Path:
    """`train_state` (optimizer, scheduler, RNG states, history) makes a checkpoint resumable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({
        "format": FORMAT,
        "arch": {"name": arch, "kwargs": dict(arch_kwargs)},
        "state_dict": state,
        "labels": list(labels),
        "preprocess": spec.to_dict(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "epoch": epoch,
        "metrics": metrics or {},
        **({"train_state": train_state} if train_state is not None else {}),
    }, path)
    return path


def load(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {ckpt.get('format')!r}")
    return ckpt


def build_net(ckpt: dict) -> torch.nn.Module:
    net = nets.build(ckpt["arch"]["name"], **ckpt["arch"]["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def preprocess_spec(ckpt: dict) -> PreprocessSpec:
    return PreprocessSpec.from_dict(ckpt["preprocess"])

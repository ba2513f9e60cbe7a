"""Registry of trainable architectures. Each lives in its own self-contained file so the archive
step can ship exactly that file inside the `.mar` (handlers never import `model/`)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Arch:
    module: str  # importable module under model.nets
    cls: str

    @property
    def file(self) -> Path:
        return Path(__file__).parent / f"{self.module.rsplit('.', 1)[-1]}.py"


ARCHS: dict[str, Arch] = {
    "small_cnn": Arch("model.nets.small_cnn", "SmallCNN"),
    "efficientnet_lite": Arch("model.nets.efficientnet_lite", "EfficientNetLite"),
}


def build(name: str, **kwargs) -> torch.nn.Module:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}")
    arch = ARCHS[name]
    return getattr(importlib.import_module(arch.module), arch.cls)(**kwargs)

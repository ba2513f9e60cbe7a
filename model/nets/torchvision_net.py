"""A torchvision classification backbone with its head sized for our classes. Ships inside the
`.mar` as the network's definition (one class; imports torch and torchvision only, both in the
serving environment). Weights are not loaded here: training loads the ImageNet state_dict
(model/pretrained.py), and the `.mar` carries the trained weights.

Grayscale input is repeated to 3 channels in `forward` rather than adapting the first
convolution: the module tree and state_dict stay exactly torchvision's for every backbone (ViT's
patch projection included), so ImageNet weights load strictly with no surgery; the cost is two
extra input channels in the stem only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# backbone → its classification layer (a Linear whose output size is num_classes)
HEADS = {
    "resnet18": "fc",
    "resnet50": "fc",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "vgg16": "classifier.6",
    "vit_b_16": "heads.head",
}


class TorchvisionNet(nn.Module):
    def __init__(self, name: str = "resnet18", num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224):
        super().__init__()
        if name not in HEADS:
            raise ValueError(f"unknown torchvision backbone {name!r}; choose from {sorted(HEADS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        # Input side the backbone is run at (None: any). ViT's patch grid and position embeddings
        # are fixed (a multiple of 16); VGG's five 2×2 pools need at least 32 px. Smaller or
        # off-grid inputs are resized inside the model, so training, evaluation and serving agree.
        self.size = None
        extra = {}
        if name == "vit_b_16":
            self.size = extra["image_size"] = -(-image_size // 16) * 16
        elif name == "vgg16" and image_size < 32:
            self.size = 32
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)

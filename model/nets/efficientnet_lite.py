"""EfficientNet-Lite (Tan & Le 2019, the TF "lite" variants: ReLU6, no squeeze-and-excitation,
stem and head not scaled). Self-contained (imports only torch): this file ships inside the `.mar`
as the network's definition, so it defines exactly one class.

Parameter names follow the `efficientnet_lite_pytorch` package (`_conv_stem`, `_blocks.N._bn1`,
`_fc`, ...) so its ImageNet weights load strictly. The weights come from TensorFlow, so every
convolution pads like TF's "SAME" (extra pixel right/bottom when strided), computed per input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# variant: (width multiplier, depth multiplier, native resolution)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}

# Stages of EfficientNet-B0 (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's epsilon, and its decay 0.99 in PyTorch's convention


def ceil(x: float) -> int:
    return int(-(-x // 1))  # math.ceil: the file may import torch only


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return (nn.Conv2d(cin, cout, kernel, stride, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))


def same_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """TF "SAME" convolution: output = ceil(input / stride), padding split low/high."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(conv.kernel_size), reversed(conv.stride)):
        total = max((ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return conv(F.pad(x, pads) if any(pads) else x)


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, variant: str = "lite0",
                 dropout: float = 0.2):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
        width, depth, _ = VARIANTS[variant]
        self._conv_stem, self._bn0 = conv_bn(in_channels, 32, 3, stride=2)
        self._blocks = nn.ModuleList()
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            # Lite keeps the first and last stages (and the stem's 32 channels) unscaled.
            fixed = i in (0, len(STAGES) - 1)
            cin = cin if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            for r in range(repeats if fixed else ceil(depth * repeats)):
                block = nn.ModuleDict()
                hidden = cin * expand
                if expand != 1:
                    block["_expand_conv"], block["_bn0"] = conv_bn(cin, hidden)
                block["_depthwise_conv"], block["_bn1"] = conv_bn(hidden, hidden, kernel,
                                                                  stride if r == 0 else 1, groups=hidden)
                block["_project_conv"], block["_bn2"] = conv_bn(hidden, cout)
                self._blocks.append(block)
                cin = cout
        self._conv_head, self._bn1 = conv_bn(cin, 1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(same_conv(self._conv_stem, x)))
        for block in self._blocks:
            y = x
            if "_expand_conv" in block:
                y = F.relu6(block["_bn0"](block["_expand_conv"](y)))
            y = F.relu6(block["_bn1"](same_conv(block["_depthwise_conv"], y)))
            y = block["_bn2"](block["_project_conv"](y))
            x = x + y if y.shape == x.shape else y  # residual when stride 1 and channels match
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

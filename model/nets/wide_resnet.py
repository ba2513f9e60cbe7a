"""Wide residual network (Zagoruyko & Komodakis, 2016: pre-activation blocks, WRN-d-k) for small
inputs such as 28×28 Fashion-MNIST. Self-contained (imports only torch): this file ships inside the
`.mar` as the network's definition, so it defines exactly one class."""
import torch
from torch import nn


class WideResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, depth: int = 16, widen: int = 8,
                 dropout: float = 0.0, flip_tta: bool = False):
        """WRN-`depth`-`widen`: three stages of (depth - 4) / 6 pre-activation basic blocks with
        16·widen, 32·widen and 64·widen channels (stride 1, 2, 2), global average pooling and one
        linear layer (`fc`). `flip_tta` averages the logits of the image and its mirror in eval
        mode, inside the model, so serving gets the same answer as evaluation."""
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth {depth}: must be 6n + 4 (10, 16, 22, 28, ...)")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.flip_tta = flip_tta
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            stages.append(nn.ModuleList(
                self.block(widths[i] if b == 0 else widths[i + 1], widths[i + 1], stride if b == 0 else 1, dropout)
                for b in range(n)))
        self.stages = nn.ModuleList(stages)
        self.final = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def block(cin: int, cout: int, stride: int, dropout: float) -> nn.ModuleDict:
        """A pre-activation basic block, BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, with a 1x1
        projection when the shape changes (its layers only: forward_block runs it)."""
        layers = {"bn1": nn.BatchNorm2d(cin), "conv1": nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                  "bn2": nn.BatchNorm2d(cout), "dropout": nn.Dropout(dropout) if dropout else nn.Identity(),
                  "conv2": nn.Conv2d(cout, cout, 3, padding=1, bias=False)}
        if cin != cout or stride != 1:
            layers["shortcut"] = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        return nn.ModuleDict(layers)

    @staticmethod
    def forward_block(b: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(b["bn1"](x))
        out = b["conv2"](b["dropout"](torch.relu(b["bn2"](b["conv1"](pre)))))
        return out + (b["shortcut"](pre) if "shortcut" in b else x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for b in stage:
                x = self.forward_block(b, x)
        return self.fc(self.final(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        if self.flip_tta and not self.training:
            out = (out + self.logits(x.flip(-1))) / 2
        return out

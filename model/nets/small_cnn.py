"""A small CNN for 28×28-class inputs. Self-contained (imports only torch): this file ships inside
the `.mar` as the network's definition, so it defines exactly one class."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 dropout: float = 0.25, depth: int = 1, flip_tta: bool = False):
        """`depth` conv layers per stage and `flip_tta` (eval-mode average of the logits of the
        image and its mirror) are for the longer CPU recipe; the defaults are the quick recipe's
        network, with the same parameter names, so older checkpoints load unchanged."""
        super().__init__()
        self.flip_tta = flip_tta

        def block(cin, cout):
            layers = []
            for i in range(depth):  # flat, so depth 1 keeps the original parameter names
                layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        # Cheap on CPU on purpose (~2 M multiply-adds per 28×28 image): the quick recipe trains
        # on 2 cores in about a minute. Pool to 7×7 so any input size ≥ 28 gives the same head.
        self.features = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 49, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        if self.flip_tta and not self.training:  # inside the model, so serving gets the same answer
            logits = (logits + self.head(self.features(x.flip(-1)))) / 2
        return logits

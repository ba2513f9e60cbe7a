"""A small CNN for 28×28-class inputs. Self-contained (imports only torch): this file ships inside
the `.mar` as the network's definition, so it defines exactly one class."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 dropout: float = 0.25):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        # Cheap on CPU on purpose (~2 M multiply-adds per 28×28 image): the quick recipe trains
        # on 2 cores in about a minute. Pool to 7×7 so any input size ≥ 28 gives the same head.
        self.features = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 49, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

"""The networks behind ``trainables.models``. Each exposes ``blocks`` (feature extractor, in
order) and ``head`` (the classifier), the split that freezing for transfer learning uses."""

from __future__ import annotations

from torch import nn


def _conv(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    # A conv followed by batch norm needs no bias: the norm's shift replaces it.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(nn.Module):
    def __init__(self, channels: int, classes: int, width: int, batch_norm: bool, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(*_conv(channels, width, batch_norm), *_conv(width, width, batch_norm), nn.MaxPool2d(2)),
                nn.Sequential(*_conv(width, 2 * width, batch_norm), nn.MaxPool2d(2)),
            ]
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, classes)
        )

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class MLPNet(nn.Module):
    def __init__(self, features: int, classes: int, width: int, depth: int, batch_norm: bool, dropout: float):
        super().__init__()
        blocks = []
        for i in range(depth):
            layers: list[nn.Module] = [nn.Linear(features if i == 0 else width, width, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

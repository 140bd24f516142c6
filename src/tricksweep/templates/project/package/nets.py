"""Your model: replace ``make_net``'s body with your network. The sweep names it by import string,
``model: {name: "$package.nets:make_net", width: ...}``; every key beside ``name`` is a keyword
argument, checked against this signature before any trial runs, and sweepable like any parameter.

tricksweep passes, because the signature names them: ``in_shape`` (C, H, W of one image),
``num_classes``, and the sweep's ``batch_norm`` and ``dropout`` switches (drop them from the
signature and sweeping them becomes a validation error). ``blocks`` (feature blocks, in order) and
``head`` (the classifier) make the model freezable for transfer learning
(``init: {name: pretrained, freeze: all_but_head}``); without them ``freeze`` is rejected.
"""

from __future__ import annotations

from torch import nn


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_net(
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 16,
    depth: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """REPLACE ME: ``depth`` 3x3 conv blocks of ``width`` channels, global average pooling, dropout,
    a linear head."""
    channels = in_shape[0]
    blocks = []
    for i in range(depth):
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        blocks.append(nn.Sequential(*layers))
        channels = width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))
    return Net(blocks, head)

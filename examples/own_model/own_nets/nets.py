"""A model factory of your own: ``model: {name: "own_nets.nets:make_net", width: 32}``.

tricksweep calls it with keyword arguments: the model's keys (``width``, ``depth``) plus, because
the signature names them, ``in_shape`` (C, H, W), ``num_classes``, and the sweep's ``batch_norm``
and ``dropout`` switches. ``blocks`` and ``head`` make it freezable for transfer learning.
"""

from __future__ import annotations

from torch import nn


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)  # feature blocks, in order: freeze: N fixes the first N
        self.head = head  # the classifier: freeze: all_but_head trains only this

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_net(
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 32,
    depth: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """``depth`` conv blocks of ``width`` channels (3x3 conv, optional batch norm, ReLU; every block
    after the first halves the resolution), global average pooling, dropout, a linear head."""
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

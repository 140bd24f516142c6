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


class ResidualBlock(nn.Module):
    """Two 3x3 convs and a shortcut (a strided 1x1 conv where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm)
        self.bn2 = norm(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batch_norm), norm(c_out))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    def __init__(
        self, channels: int, classes: int, width: int, depth: int, per_stage: int, batch_norm: bool, dropout: float
    ):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(*_conv(channels, width, batch_norm))]
        c_in = width
        for stage in range(depth):
            c_out = width * 2**stage
            blocks.append(
                nn.Sequential(
                    *(
                        ResidualBlock(c_in if i == 0 else c_out, c_out, 2 if stage and i == 0 else 1, batch_norm)
                        for i in range(per_stage)
                    )
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, classes))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _torchvision_resnet():
    from torchvision.models import ResNet as TorchvisionResNet

    return TorchvisionResNet


class TorchvisionResNet18(nn.Module):
    """torchvision's resnet18 with its own parameter names (``conv1``, ``layer1``, ``fc``...) so
    torchvision's weights load as they are; ``blocks`` and ``head`` are views onto its layers."""

    def __init__(self, channels: int, classes: int, small_stem: bool, batch_norm: bool, dropout: float):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        net = _torchvision_resnet()(BasicBlock, [2, 2, 2, 2], num_classes=classes, norm_layer=norm)
        if small_stem:
            # 32x32 inputs: a 7x7 stride-2 conv and a max-pool would leave 8x8 maps after the stem.
            net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
            setattr(self, name, getattr(net, name))
        self.dropout = nn.Dropout(dropout)  # no parameters: the state dict stays torchvision's

    @property
    def blocks(self) -> nn.ModuleList:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return nn.ModuleList([stem, self.layer1, self.layer2, self.layer3, self.layer4])

    @property
    def head(self) -> nn.Module:
        return self.fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


# torchvision's classifier heads, by the attribute name its architectures use.
TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")


def torchvision_net(arch: str, in_shape: tuple[int, int, int], classes: int, extra: dict) -> nn.Module:
    """torchvision's ``arch`` with ``weights=None`` and ``num_classes=classes``, its own parameter
    names kept (so torchvision's weights load as they are).

    Input: when the data does not have 3 channels, the first ``Conv2d`` (the stem of every
    torchvision classifier) is replaced by one taking ``in_shape[0]`` channels, with the same
    kernel, stride, padding and outputs. The input size is left alone.

    Freezing: ``head`` is the first of ``fc``, ``classifier``, ``heads``, ``head`` the model has;
    ``blocks`` are its other top-level children that hold parameters, in order, with a child named
    ``features`` replaced by its own children (resnet18: conv1, bn1, layer1..layer4;
    mobilenet_v3_small: features.0..features.12). A model that already has ``blocks`` / ``head``
    keeps them. Parameters held by the model itself (ViT's class token) are in no block.
    """
    import torchvision.models

    net = torchvision.models.get_model(arch, weights=None, num_classes=classes, **extra)
    if in_shape[0] != 3:
        _adapt_first_conv(net, in_shape[0])
    head_name = next((name for name in TORCHVISION_HEADS if isinstance(getattr(net, name, None), nn.Module)), None)
    if head_name is not None and not hasattr(net, "blocks"):
        children = [child for name, child in net.named_children() if name != head_name]
        if isinstance(getattr(net, "features", None), nn.Sequential):
            at = children.index(net.features)
            children[at : at + 1] = list(net.features.children())
        blocks = [child for child in children if any(True for _ in child.parameters())]
        # Plain attributes, not registered submodules: the state dict stays torchvision's.
        object.__setattr__(net, "blocks", nn.ModuleList(blocks))
    if head_name is not None and not hasattr(net, "head"):
        object.__setattr__(net, "head", getattr(net, head_name))
    return net


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    path, conv = next((path, module) for path, module in net.named_modules() if isinstance(module, nn.Conv2d))
    parent_path, _, name = path.rpartition(".")
    setattr(
        net.get_submodule(parent_path),
        name,
        nn.Conv2d(
            channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=1, bias=conv.bias is not None,
        ),
    )

"""Model options. Every builder takes the batch_norm / dropout switches; the networks live in
``trainables.nets`` so that reading this table does not import torch.

Every network exposes ``blocks`` (the feature extractor, in order) and ``head`` (the classifier):
the split that freezing for transfer learning uses (``block_count`` says how many blocks).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainables.options import Strict, one_of


class CNN(Strict):
    """Two conv blocks (conv-conv-pool, conv-pool), global average pooling, linear head."""

    name: Literal["cnn"] = "cnn"
    width: int = Field(32, ge=4, le=512, description="channels of the first block (the second has 2x)")

    def block_count(self) -> int:
        return 2

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import SmallCNN

        return SmallCNN(in_shape[0], classes, self.width, batch_norm, dropout)


class MLP(Strict):
    """Flattened pixels through ``depth`` hidden layers of ``width`` units."""

    name: Literal["mlp"] = "mlp"
    width: int = Field(128, ge=4, le=4096, description="units per hidden layer")
    depth: int = Field(2, ge=1, le=8, description="hidden layers")

    def block_count(self) -> int:
        return self.depth

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import MLPNet

        features = in_shape[0] * in_shape[1] * in_shape[2]
        return MLPNet(features, classes, self.width, self.depth, batch_norm, dropout)


class ResNet(Strict):
    """A ResNet for small images (32x32 colour, also 8x8 / 28x28 grey): a 3x3 conv stem, then
    ``depth`` stages of ``per_stage`` residual blocks (two 3x3 convs each); every stage after the
    first halves the resolution and doubles the channels. Blocks for freezing: stem, stage 1..depth."""

    name: Literal["resnet"] = "resnet"
    width: int = Field(32, ge=4, le=512, description="channels of the stem and the first stage")
    depth: int = Field(3, ge=1, le=5, description="stages")
    per_stage: int = Field(1, ge=1, le=8, description="residual blocks per stage")

    def block_count(self) -> int:
        return self.depth + 1

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import ResNet as Net

        return Net(in_shape[0], classes, self.width, self.depth, self.per_stage, batch_norm, dropout)


class ResNet18(Strict):
    """torchvision's resnet18 (always built with weights=None; ImageNet weights come from
    ``init: {name: pretrained, source: resnet18.IMAGENET1K_V1}``). Blocks for freezing: the stem,
    layer1..layer4."""

    name: Literal["resnet18"] = "resnet18"
    stem: Literal["auto", "small", "imagenet"] = Field(
        "auto",
        description="small: 3x3 stride-1 conv, no max-pool (for inputs up to 64 px); imagenet: torchvision's "
        "7x7 stride-2 conv + max-pool (needed to load ImageNet weights); auto: small below 64 px",
    )

    def block_count(self) -> int:
        return 5

    def small_stem(self, in_shape) -> bool:
        return self.stem == "small" or (self.stem == "auto" and max(in_shape[1:]) <= 64)

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import TorchvisionResNet18

        return TorchvisionResNet18(in_shape[0], classes, self.small_stem(in_shape), batch_norm, dropout)


MODELS: dict[str, type[Strict]] = {"cnn": CNN, "mlp": MLP, "resnet": ResNet, "resnet18": ResNet18}
Model = one_of(MODELS)

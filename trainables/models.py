"""Model options. Every builder takes the batch_norm / dropout switches; the networks live in
``trainables.nets`` so that reading this table does not import torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainables.options import Strict, one_of


class CNN(Strict):
    """Two conv blocks (conv-conv-pool, conv-pool), global average pooling, linear head."""

    name: Literal["cnn"] = "cnn"
    width: int = Field(32, ge=4, le=512, description="channels of the first block (the second has 2x)")

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import SmallCNN

        return SmallCNN(in_shape[0], classes, self.width, batch_norm, dropout)


class MLP(Strict):
    """Flattened pixels through ``depth`` hidden layers of ``width`` units."""

    name: Literal["mlp"] = "mlp"
    width: int = Field(128, ge=4, le=4096, description="units per hidden layer")
    depth: int = Field(2, ge=1, le=8, description="hidden layers")

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import MLPNet

        features = in_shape[0] * in_shape[1] * in_shape[2]
        return MLPNet(features, classes, self.width, self.depth, batch_norm, dropout)


MODELS: dict[str, type[Strict]] = {"cnn": CNN, "mlp": MLP}
Model = one_of(MODELS)

"""A module trainable with a pydantic Config: ``trainable: own_mlp.configured``. Every corner of the
sweep's space is validated through ``Config`` before any trial runs, and the sweep's metric is
checked against ``METRICS``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from own_mlp.fit import train_mlp

METRICS = ("val_accuracy", "val_loss")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(32, ge=1, le=1024, description="units in the hidden layer")
    lr: float = Field(0.05, gt=0, le=1, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")


def train(config: Config, report) -> None:
    train_mlp(hidden=config.hidden, lr=config.lr, momentum=config.momentum, report=report)

"""Optimizers and the parameters each one accepts.

``OPTIMIZERS`` is the option table the spec validator reads: ``momentum`` given to ``adam`` is
rejected before any trial runs because ``Adam`` has no such field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainables.options import Strict, one_of

LR = "learning rate (step size, in parameter units per gradient unit)"
WD = "L2 weight decay coefficient (0 = off)"


class SGD(Strict):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, gt=0, description=LR)
    weight_decay: float = Field(0.0, ge=0, description=WD)

    def build(self, params):
        import torch

        return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)


class SGDMomentum(Strict):
    name: Literal["sgd_momentum"] = "sgd_momentum"
    lr: float = Field(0.05, gt=0, description=LR)
    momentum: float = Field(0.9, ge=0, lt=1, description="velocity decay per step (fraction)")
    nesterov: bool = Field(False, description="Nesterov look-ahead momentum")
    weight_decay: float = Field(0.0, ge=0, description=WD)

    def build(self, params):
        import torch

        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov and self.momentum > 0,
            weight_decay=self.weight_decay,
        )


class Adagrad(Strict):
    name: Literal["adagrad"] = "adagrad"
    lr: float = Field(0.01, gt=0, description=LR)
    weight_decay: float = Field(0.0, ge=0, description=WD)

    def build(self, params):
        import torch

        return torch.optim.Adagrad(params, lr=self.lr, weight_decay=self.weight_decay)


class RMSprop(Strict):
    name: Literal["rmsprop"] = "rmsprop"
    lr: float = Field(0.001, gt=0, description=LR)
    alpha: float = Field(0.99, gt=0, lt=1, description="squared-gradient average decay (fraction)")
    momentum: float = Field(0.0, ge=0, lt=1, description="velocity decay per step (fraction)")
    weight_decay: float = Field(0.0, ge=0, description=WD)

    def build(self, params):
        import torch

        return torch.optim.RMSprop(
            params, lr=self.lr, alpha=self.alpha, momentum=self.momentum, weight_decay=self.weight_decay
        )


class Adam(Strict):
    name: Literal["adam"] = "adam"
    lr: float = Field(0.001, gt=0, description=LR)
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay (fraction)")
    beta2: float = Field(0.999, ge=0, lt=1, description="second-moment decay (fraction)")
    weight_decay: float = Field(0.0, ge=0, description=WD + ", coupled to the gradient")

    def build(self, params):
        import torch

        return torch.optim.Adam(
            params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay
        )


class AdamW(Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(0.001, gt=0, description=LR)
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay (fraction)")
    beta2: float = Field(0.999, ge=0, lt=1, description="second-moment decay (fraction)")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay coefficient")

    def build(self, params):
        import torch

        return torch.optim.AdamW(
            params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay
        )


OPTIMIZERS: dict[str, type[Strict]] = {
    "sgd": SGD,
    "sgd_momentum": SGDMomentum,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}
Optimizer = one_of(OPTIMIZERS)

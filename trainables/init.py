"""Weight initialisations for every Conv/Linear layer (biases start at zero).

``zeros`` is here on purpose: with every weight equal, all hidden units receive the same
gradient and stay identical, so the network cannot learn beyond its biases.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainables.options import Strict, one_of


class _Init(Strict):
    def apply(self, model) -> None:
        import torch

        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                    self.init_weight(layer.weight)
                    if layer.bias is not None:
                        layer.bias.zero_()

    def init_weight(self, weight) -> None:
        raise NotImplementedError


class Zeros(_Init):
    name: Literal["zeros"] = "zeros"

    def init_weight(self, weight):
        weight.zero_()


class Normal(_Init):
    name: Literal["normal"] = "normal"
    std: float = Field(0.01, gt=0, description="standard deviation of N(0, std²)")

    def init_weight(self, weight):
        weight.normal_(0.0, self.std)


class Uniform(_Init):
    name: Literal["uniform"] = "uniform"
    a: float = Field(0.05, gt=0, description="half-width of U(-a, a)")

    def init_weight(self, weight):
        weight.uniform_(-self.a, self.a)


class Xavier(_Init):
    name: Literal["xavier"] = "xavier"
    distribution: Literal["uniform", "normal"] = "uniform"
    gain: float = Field(1.0, gt=0, description="scale factor on Glorot's variance")

    def init_weight(self, weight):
        import torch

        fn = torch.nn.init.xavier_uniform_ if self.distribution == "uniform" else torch.nn.init.xavier_normal_
        fn(weight, gain=self.gain)


class He(_Init):
    name: Literal["he"] = "he"
    distribution: Literal["uniform", "normal"] = "normal"

    def init_weight(self, weight):
        import torch

        fn = torch.nn.init.kaiming_uniform_ if self.distribution == "uniform" else torch.nn.init.kaiming_normal_
        fn(weight, nonlinearity="relu")


INITS: dict[str, type[Strict]] = {
    "zeros": Zeros,
    "normal": Normal,
    "uniform": Uniform,
    "xavier": Xavier,
    "he": He,
}
Init = one_of(INITS)

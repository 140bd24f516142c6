"""Model options: the classifier's ``model:``. Three kinds, every trick sweepable on each.

**Built in** (``MODELS``): ``cnn``, ``mlp``, ``resnet``, ``resnet18``. Each builder takes the
batch_norm / dropout switches; the networks live in ``trainables.nets`` so that validating a spec
over them does not import torch.

**torchvision's classification models by name**: ``{name: torchvision, arch: mobilenet_v3_small}``,
any builder that ``torchvision.models.list_models(module=torchvision.models)`` lists. Built with
``weights=None`` and ``num_classes`` from the data (weights come only from ``init: pretrained``:
a local file or a torchvision weights name, see ``trainables.init``). ``dropout`` reaches it when
the architecture's class takes ``dropout`` (mobilenet, efficientnet, squeezenet, vgg, ...);
``batch_norm`` never does (each architecture fixes its own normalization). Builders with auxiliary
heads (googlenet, inception_v3) are built with ``aux_logits=False``. Inputs whose channel count is
not 3 are adapted by replacing the network's first ``Conv2d`` with one taking the data's channels
(same kernel, stride and padding); the input size is never changed, so an architecture that cannot
take the data's image size (squeezenet on 8x8 digits, ViT off 224 px) is rejected at validation.
Blocks and head for freezing: see ``trainables.nets.torchvision_net``.

**Your own factory by import string**: ``{name: "own_nets.nets:make_net", width: 64}``. Every
key besides ``name`` is a keyword argument of the factory (sweepable like any parameter:
``width: {choice: [32, 64]}``), checked against its signature at validation. The factory is
called with keyword arguments only: those keys, plus each of these that its signature names:

- ``in_shape``: the input's ``(channels, height, width)``, a tuple of ints;
- ``num_classes``: the class count of the data;
- ``batch_norm`` (bool) and ``dropout`` (float): the classifier's switches. Setting or sweeping
  a switch the factory does not name is a validation error.

It returns a ``torch.nn.Module`` mapping a float batch ``(N, C, H, W)`` to logits ``(N,
num_classes)``. To be frozen for transfer learning (``init: {name: pretrained, freeze: ...}``)
it exposes ``blocks`` (its feature blocks, in order, e.g. an ``nn.ModuleList``) and ``head``
(the classifier module), as the built-in networks do; without them, any ``freeze`` but ``none``
is rejected.

A torchvision or factory model is checked at validation, where the dataset's input shape and
class count are known (``input_shape`` / ``num_classes`` of the dataset options), by building it
on the CPU and passing ONE zero batch ``(2, C, H, W)`` through it in training mode, with the
switches off: a model that cannot take the data's input, or whose output is not ``(2,
num_classes)`` logits (any class count when the dataset's is known only once read), is rejected
with the reason, instead of failing every trial. The result is
cached per model configuration, so a space with many corners pays for each distinct model once.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

from trainables.options import Strict

# The arguments tricksweep supplies to a factory (when its signature names them), never model keys.
SUPPLIED = ("in_shape", "num_classes", "batch_norm", "dropout")
SWITCHES = ("batch_norm", "dropout")
# How an import-string name shows among the valid options in error messages.
FACTORY_TAG = "package.module:function"
IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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


class Torchvision(Strict):
    """One of torchvision's classification models, by builder name (see the module docstring)."""

    name: Literal["torchvision"] = "torchvision"
    arch: str = Field(description="a builder torchvision.models.list_models(module=torchvision.models) lists")

    @field_validator("arch")
    @classmethod
    def _listed(cls, arch: str) -> str:
        listed = torchvision_archs()
        if arch not in listed:
            close = difflib.get_close_matches(arch, listed, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(
                f"not a torchvision classification model{hint}; torchvision.models.list_models(module="
                f"torchvision.models) lists {len(listed)}: {', '.join(listed[:6])}, ..."
            )
        return arch

    def takes(self, switch: str) -> bool:
        return switch == "dropout" and "dropout" in _torchvision_class_parameters(self.arch)

    def build(self, in_shape, classes, batch_norm, dropout):
        from trainables.nets import torchvision_net

        extra: dict[str, Any] = {"dropout": dropout} if self.takes("dropout") else {}
        if "aux_logits" in _torchvision_class_parameters(self.arch):
            extra["aux_logits"] = False  # the classifier trains on one logits tensor
        return torchvision_net(self.arch, tuple(in_shape), classes, extra)

    def describe(self) -> str:
        return f"torchvision's {self.arch}"


class Factory(BaseModel):
    """Your own ``nn.Module`` factory, by import string; the other keys are its keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(
        FACTORY_TAG,
        pattern=IMPORT_STRING.pattern,
        description="import string 'package.module:function' of a function returning an nn.Module",
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def takes(self, switch: str) -> bool:
        return switch in factory_signature(self.name).parameters

    def describe(self) -> str:
        return f"factory '{self.name}'"

    def build(self, in_shape, classes, batch_norm, dropout):
        function = import_factory(self.name)
        supplied = {"in_shape": tuple(in_shape), "num_classes": classes, "batch_norm": batch_norm, "dropout": dropout}
        parameters = factory_signature(self.name).parameters
        return function(**self.kwargs, **{k: v for k, v in supplied.items() if k in parameters})


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


# Named options; an import string (with a colon) names a Factory instead.
MODELS: dict[str, type[Strict]] = {
    "cnn": CNN,
    "mlp": MLP,
    "resnet": ResNet,
    "resnet18": ResNet18,
    "torchvision": Torchvision,
}


def _tag(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return FACTORY_TAG if isinstance(name, str) and ":" in name else name


def _known_name(value: Any) -> Any:
    # `model: cnn` means `model: {name: cnn}`; an unknown name is reported as pydantic would report
    # an unknown tag, so that the spec's error line reads like every other option's.
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict) and _tag(value) not in (*MODELS, FACTORY_TAG, None):
        valid = [*MODELS, FACTORY_TAG]
        raise PydanticCustomError(
            "union_tag_invalid",
            "unknown model {tag}",
            {"discriminator": "'name'", "tag": value["name"], "expected_tags": ", ".join(f"'{v}'" for v in valid)},
        )
    if isinstance(value, dict) and _tag(value) == FACTORY_TAG and IMPORT_STRING.match(value["name"]):
        check_factory_arguments(value["name"], [k for k in value if k != "name"])
    return value


Model = Annotated[
    Union[tuple(Annotated[option, Tag(name)] for name, option in {**MODELS, FACTORY_TAG: Factory}.items())],  # noqa: UP007
    Discriminator(_tag),
    BeforeValidator(_known_name),
]


# -- checks the classifier's Config runs (field validators) ------------------------------------


def fits_data(cls: Any, model: Any, info: Any) -> Any:
    """A ``model`` field validator: a torchvision or factory model must take the data's input
    (one zero batch through it; torch is imported only for these)."""
    data = info.data.get("data")
    shape = getattr(data, "input_shape", None) if data is not None else None
    if isinstance(model, (Torchvision, Factory)) and shape is not None:
        problem = probe(model, tuple(shape), data.num_classes).problem
        if problem:
            raise ValueError(problem)
    return model


def switch_taken(cls: Any, value: Any, info: Any) -> Any:
    """A ``batch_norm`` / ``dropout`` field validator (it runs only when the switch is set): the
    model must take the switch."""
    model = info.data.get("model")
    if isinstance(model, (Torchvision, Factory)) and not model.takes(info.field_name):
        why = (
            "its signature has no such parameter"
            if isinstance(model, Factory)
            else "its architecture fixes it"
            if info.field_name == "batch_norm"
            else "its class takes no dropout argument"
        )
        raise ValueError(f"{model.describe()} does not take {info.field_name} ({why}); remove it from the space")
    return value


# -- torch-side helpers (imported lazily) ---------------------------------------------------------


def torchvision_archs() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


@functools.lru_cache(maxsize=64)
def _torchvision_class_parameters(arch: str) -> frozenset[str]:
    """Keyword arguments of the class ``arch``'s builder makes (built on the meta device: no memory)."""
    import torch
    import torchvision.models

    with torch.device("meta"):
        net = torchvision.models.get_model(arch, weights=None)
    return frozenset(inspect.signature(type(net).__init__).parameters)


def import_factory(target: str) -> Any:
    """The function ``target`` ('package.module:function') names; ValueError (one line) otherwise."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(
                f"no module named '{err.name}' in the current folder, the spec's folder and the folder above it, "
                "or the installed packages"
            ) from None
        raise ValueError(f"importing '{module_name}' failed: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any error in the user's module is reported as one line
        raise ValueError(f"importing '{module_name}' failed: {type(err).__name__}: {err}") from None
    if not hasattr(module, attribute):
        public = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attribute, public, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"module '{module_name}' has no attribute '{attribute}'{hint}")
    function = getattr(module, attribute)
    if not callable(function):
        raise ValueError(f"'{target}' is a {type(function).__name__}, not a function returning an nn.Module")
    return function


def factory_signature(target: str) -> inspect.Signature:
    function = import_factory(target)
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some C callables have none: anything may be passed
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def check_factory_arguments(target: str, keys: list[str]) -> None:
    """Raise ValueError (one line) when a model's keys do not fit its factory's signature."""
    describe = f"factory '{target}'"
    parameters = factory_signature(target).parameters
    own = [p for p in parameters if p not in SUPPLIED and parameters[p].kind not in _VARIADIC]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    supplied = [p for p in SUPPLIED if p in parameters]
    accepts = (
        f"it takes: {', '.join(own) or 'no arguments of its own'}"
        + (" and any other keyword (**kwargs)" if open_ended else "")
        + (f" (and {', '.join(supplied)} from tricksweep)" if supplied else "")
    )
    for key in keys:
        if key in SWITCHES:
            raise ValueError(f"'{key}' is the classifier's switch: set it beside model, not under it")
        if key in SUPPLIED:
            raise ValueError(f"'{key}' is supplied by tricksweep from the data; remove it from model")
        if key not in own and not open_ended:
            close = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{describe} takes no argument '{key}'{hint}; {accepts}")
    for name, parameter in parameters.items():
        if parameter.kind in _VARIADIC or parameter.default is not inspect.Parameter.empty:
            continue
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ValueError(f"{describe}: argument '{name}' is positional-only; factories are called with keywords")
        if name not in keys and name not in SUPPLIED:
            raise ValueError(f"{describe} needs argument '{name}' (it has no default): add it under model")


class Probe(BaseModel):
    """What one zero batch through a model showed."""

    problem: str | None = None  # why the model cannot take the data (None: it can)
    blocks: int | None = None  # len(model.blocks), None when it exposes no blocks and head


def probe(model: Any, in_shape: tuple[int, int, int], classes: int | None) -> Probe:
    """Build ``model`` for ``in_shape`` and ``classes`` (None: not known before the data is read;
    then any class count is accepted) and pass one zero batch through it."""
    key = json.dumps(model.model_dump(mode="json"), sort_keys=True, default=str)
    return _probe(type(model), key, in_shape, classes)


@functools.lru_cache(maxsize=64)
def _probe(kind: type, key: str, in_shape: tuple[int, int, int], classes: int | None) -> Probe:
    import torch

    model = kind.model_validate(json.loads(key))
    what = model.describe()
    shown = "x".join(str(d) for d in in_shape)
    try:
        with torch.device("cpu"):
            net = model.build(in_shape, classes or 2, False, 0.0)
    except Exception as err:  # noqa: BLE001 - the user's factory: any error is reported as one line
        return Probe(problem=f"building {what} for {shown} inputs and {classes} classes failed: {_last_line(err)}")
    if not isinstance(net, torch.nn.Module):
        return Probe(problem=f"{what} returned a {type(net).__name__}, not a torch.nn.Module")
    batch = torch.zeros(2, *in_shape)
    net.train()
    try:
        with torch.no_grad():
            out = net(batch)
    except Exception as err:  # noqa: BLE001 - whatever the forward pass raises is the reason
        hint = (
            "; use a dataset of larger images (image_folder's size) or a model for small inputs"
            if "too small" in str(err) or "Expected" in str(err)
            else ""
        )
        return Probe(problem=f"{what} cannot take the data's {shown} inputs: a zero batch through it raised "
                             f"{_last_line(err)}{hint}")
    is_logits = isinstance(out, torch.Tensor) and out.dim() == 2 and len(out) == 2
    if not is_logits or (classes is not None and out.shape[1] != classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return Probe(problem=f"{what} maps a zero batch (2, {', '.join(map(str, in_shape))}) to {got}; the "
                             f"classifier needs logits of shape (2, {classes or 'num_classes'}) (take num_classes)")
    blocks = getattr(net, "blocks", None)
    exposed = blocks is not None and isinstance(getattr(net, "head", None), torch.nn.Module)
    return Probe(blocks=len(blocks) if exposed else None)


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1].strip() if lines else ''}".rstrip(": ")

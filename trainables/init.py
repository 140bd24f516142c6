"""Weight initialisations for every Conv/Linear layer (biases start at zero), and ``pretrained``:
transfer learning from another model's weights with frozen layers.

``zeros`` is here on purpose: with every weight equal, all hidden units receive the same
gradient and stay identical, so the network cannot learn beyond its biases.

    init: {name: pretrained, source: /models/state.pt, freeze: all_but_head}
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from trainables.data import FilesUnavailable, absolute
from trainables.options import Strict, one_of

PRETRAINED_ONLY = ("source", "freeze", "reset_head")


def pretrained_only(value: Any) -> Any:
    """Reject ``freeze`` / ``source`` on a from-scratch init with the rule, not just "unknown key"
    (a before-validator of the trainable's ``init`` field)."""
    if isinstance(value, dict) and value.get("name") != "pretrained":
        for key in PRETRAINED_ONLY:
            if key in value:
                raise ValueError(
                    f"'{key}' needs init 'pretrained' (transfer learning); init '{value.get('name')}' trains "
                    "every layer from its own random start"
                )
    return value


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


# `resnet18.IMAGENET1K_V1`: torchvision's model name, a dot, the weights' enum member.
TORCHVISION_WEIGHTS = re.compile(r"^(?P<arch>[a-z][a-z0-9_]*)\.(?P<member>[A-Z][A-Z0-9_]*)$")


class FromSweep(Strict):
    sweep: str = Field(description="a tricksweep sweep's name: the best model of its latest finished run")


class FromMlflow(Strict):
    mlflow: str = Field(
        pattern=r"^(runs|models):/", description="runs:/<run_id>/<path to state.pt> or models:/<name>/<version>"
    )


Freeze = Literal["none", "all_but_head", "all_but_last_block"] | Annotated[int, Field(ge=0, strict=True)]


class Pretrained(_Init):
    """Start from another model's weights; optionally freeze the leading blocks.

    ``source`` is a local state-dict or checkpoint file (``{"model": state_dict, ...}`` as the
    classifier saves), a torchvision weights name (``resnet18.IMAGENET1K_V1``, downloaded on
    first use), or, resolved by the engine to a local file before trials start, ``{sweep: name}``
    or ``{mlflow: runs:/...}`` / ``{mlflow: models:/...}``. Layers absent from the source (a head
    with another class count) keep their fresh initialisation. Frozen layers get no gradient
    and their batch-norm statistics stay the source's.
    """

    name: Literal["pretrained"] = "pretrained"
    source: str | FromSweep | FromMlflow = Field(description="where the weights come from (see above)")
    freeze: Freeze = Field(
        "none",
        description="none | all_but_head | all_but_last_block | N: the first N blocks (model.blocks) stay fixed",
    )
    reset_head: bool = Field(False, description="re-create the classifier head even when the class count matches")

    @field_validator("source", mode="before")
    @classmethod
    def _uri_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(("runs:/", "models:/")):
            return {"mlflow": value}
        ok = isinstance(value, str) and value.strip() or (
            isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str)
            and next(iter(value)) in ("sweep", "mlflow")
        )
        if not ok:
            raise ValueError(
                "must be a weights file path, a torchvision weights name (resnet18.IMAGENET1K_V1), "
                "{sweep: <sweep name>} or {mlflow: runs:/<run_id>/<path> | models:/<name>/<version>}"
            )
        return value

    @field_validator("source")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        if isinstance(value, str) and not TORCHVISION_WEIGHTS.match(value):
            return absolute(value)
        return value

    # -- validation against the model (called by the trainable's config validator) -----------

    def frozen_blocks(self, block_count: int) -> int:
        named = {"none": 0, "all_but_head": block_count, "all_but_last_block": max(block_count - 1, 0)}
        return named[self.freeze] if isinstance(self.freeze, str) else self.freeze

    def check(self, model: Any, data: Any, batch_norm: bool, dropout: float) -> None:
        """Raise ValueError (one line) when ``freeze`` or the source's weights do not fit ``model``."""
        if getattr(data, "input_shape", None) is None:
            return  # a dataset whose shape is known once read: the trial checks when it loads the weights
        blocks = block_count(model, data)
        freezes = self.freeze not in ("none", 0)
        if blocks is None and (freezes or self.reset_head):
            what = f"freeze = {self.freeze!r}" if freezes else "reset_head = True"
            raise ValueError(
                f"{what}: {_shown(model)} exposes no `blocks` (its feature blocks, in order) and `head` "
                "(its classifier module); return a module with both to freeze it, or use freeze: none"
            )
        if isinstance(self.freeze, int) and blocks is not None and self.freeze > blocks:
            raise ValueError(f"freeze = {self.freeze}: {_shown(model)} has {blocks} blocks; must be 0..{blocks}")
        source = source_shapes(self.source)
        if source is None:
            return  # resolved by the engine, or a file not on this machine: checked when the trial loads it
        own, head = model_shapes(model, data.input_shape, data.num_classes or 2, batch_norm, dropout)
        problems = mismatches(source, own, head)
        if problems:
            options = ", ".join(f"{k}={v}" for k, v in model.model_dump().items() if k != "name")
            raise ValueError(
                f"source {self.describe_source()} does not fit model '{model.name}' "
                f"({options}, batch_norm={batch_norm}) "
                f"on {tuple(data.input_shape)} inputs: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + f"; {source_description(self.source)}"
            )

    def describe_source(self) -> str:
        return self.source if isinstance(self.source, str) else str(self.source.model_dump())

    # -- training-time --------------------------------------------------------------------------

    def apply(self, model) -> None:
        state = load_state(self.source)
        own = model.state_dict()
        head = head_keys(model)
        problems = mismatches(
            {k: tuple(v.shape) for k, v in state.items()}, {k: tuple(v.shape) for k, v in own.items()}, head
        )
        if problems:
            raise ValueError(f"source {self.describe_source()} does not fit {type(model).__name__}: {problems[0]}")
        keep_head = not self.reset_head and all(k in state and state[k].shape == own[k].shape for k in head)
        model.load_state_dict({k: v for k, v in state.items() if keep_head or k not in head}, strict=False)
        for block in list(getattr(model, "blocks", []))[: self.frozen_blocks(len(getattr(model, "blocks", [])))]:
            for p in block.parameters():
                p.requires_grad_(False)


INITS: dict[str, type[Strict]] = {
    "zeros": Zeros,
    "normal": Normal,
    "uniform": Uniform,
    "xavier": Xavier,
    "he": He,
    "pretrained": Pretrained,
}
Init = one_of(INITS)


def train_mode(model) -> None:
    """``model.train()``, except that batch-norm layers whose parameters are frozen stay in eval
    mode: they normalise with the source's running statistics and do not update them."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def _shown(model: Any) -> str:
    return model.describe() if hasattr(model, "describe") else f"model '{model.name}'"


def block_count(model: Any, data: Any) -> int | None:
    """How many blocks ``model`` (an option of ``trainables.models``) has on ``data``'s inputs; None
    when it exposes no ``blocks`` and ``head`` (a factory's module may not)."""
    if hasattr(model, "block_count"):
        return model.block_count()
    from trainables.models import probe

    return probe(model, tuple(data.input_shape), data.num_classes).blocks


def head_keys(model) -> set[str]:
    """State-dict keys of ``model.head`` (``head.3.weight``, or ``fc.weight`` in torchvision's nets);
    none for a model without a head."""
    if not hasattr(model, "head"):
        return set()
    prefix = next(name for name, module in model.named_modules() if module is model.head)
    return {k for k in model.state_dict() if k.startswith(f"{prefix}.")}


def mismatches(source: dict[str, tuple], own: dict[str, tuple], head: set[str]) -> list[str]:
    """Why the source's weights do not fit the model, outside its head (empty when they fit)."""
    problems = []
    for key, shape in own.items():
        if key in head:
            continue
        if key not in source:
            problems.append(f"the model's {key} {list(shape)} is not in the source")
        elif tuple(source[key]) != tuple(shape):
            problems.append(f"{key} is {list(source[key])} in the source but {list(shape)} in the model")
    problems += [f"the source's {key} is not in the model" for key in source if key not in own and key not in head]
    return problems


def model_shapes(
    model: Any, in_shape, classes: int, batch_norm: bool, dropout: float
) -> tuple[dict[str, tuple], set[str]]:
    import torch

    with torch.device("meta"):  # shapes only: no memory, no init cost
        net = model.build(tuple(in_shape), classes, batch_norm, dropout)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}, head_keys(net)


def source_shapes(source: Any) -> dict[str, tuple] | None:
    """The source's parameter shapes when they can be known here and now, else None."""
    if not isinstance(source, str):
        return None
    if match := TORCHVISION_WEIGHTS.match(source):
        import torch
        import torchvision.models

        _torchvision_weights(source)  # rejects an unknown name
        with torch.device("meta"):
            net = torchvision.models.get_model(match["arch"], weights=None)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    path = Path(source)
    if not path.is_file():
        return None
    stat = path.stat()
    return _file_shapes(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _file_shapes(path: str, mtime_ns: int, size: int) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in _read_state_file(path).items()}


def source_description(source: Any) -> str:
    """What the source was built as, for error messages."""
    if isinstance(source, str) and (match := TORCHVISION_WEIGHTS.match(source)):
        return (
            f"the source is torchvision's {match['arch']} (its weights need model "
            f"{{name: torchvision, arch: {match['arch']}}} on 3-channel images, or for resnet18 "
            f"{{name: resnet18, stem: imagenet}} with batch_norm: true)"
        )
    config = Path(str(source)).with_name("best_config.yaml")
    if config.is_file():
        import yaml

        cfg = yaml.safe_load(config.read_text()) or {}
        model = cfg.get("model", {})
        shown = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name") if isinstance(model, dict) else ""
        name = model.get("name") if isinstance(model, dict) else model
        return (
            f"the source was trained as model '{name}' ({shown}, batch_norm={cfg.get('batch_norm', False)}) "
            "per its best_config.yaml"
        )
    return "use the model and batch_norm setting the source was trained with"


def load_state(source: Any) -> dict:
    """The source's state dict (CPU tensors), loaded with ``weights_only=True``."""
    if not isinstance(source, str):
        raise ValueError(
            f"init.source = {source.model_dump()}: sweep and MLflow sources are resolved to a local file by the "
            "engine before trials start; outside the engine, pass a local file path"
        )
    if TORCHVISION_WEIGHTS.match(source):
        return _download_torchvision(source)
    if not Path(source).is_file():
        raise FilesUnavailable(
            f"init.source = {source}: no such file on this machine; copy the weights there or fix the path"
        )
    return _read_state_file(source)


def _read_state_file(path: str) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # checkpoints: the classifier's {"model": ...}, Lightning's, ...
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(
            f"init.source = {path}: not a state dict (name -> tensor) nor a checkpoint holding one under 'model'"
        )
    return state


def _torchvision_weights(name: str):
    import torchvision.models

    match = TORCHVISION_WEIGHTS.match(name)
    try:
        enum = torchvision.models.get_model_weights(match["arch"])
    except ValueError:
        raise ValueError(f"source {name!r}: torchvision has no model '{match['arch']}'") from None
    members = [w.name for w in enum]
    if match["member"] not in members:
        raise ValueError(f"source {name!r}: unknown torchvision weights; {match['arch']} has: {', '.join(members)}")
    return enum[match["member"]]


def _download_torchvision(name: str) -> dict:
    import torch
    from filelock import FileLock

    weights = _torchvision_weights(name)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(weights.url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".tricksweep.lock")):  # concurrent trials on a node download once
            return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # noqa: BLE001 - URLError, HTTPError, OSError, hash mismatch...
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise FilesUnavailable(
            f"init.source = {name}: {file} is missing and the download failed ({reason}); download {weights.url} "
            f"on a machine with network access and copy it to {folder}, or give a local state-dict file"
        ) from None

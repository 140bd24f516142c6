"""The search-space DSL and its compilation to Ray Tune domains.

A space is a mapping from parameter names to values. A value is either a constant or one of::

    {choice: [a, b, ...]}        one option at random (options may be blocks, see below)
    {grid: [a, b, ...]}          every option, each in its own trial(s)
    {uniform: [low, high]}       float, low <= x <= high
    {loguniform: [low, high]}    float on a log scale, 0 < low <= x <= high
    {int: [low, high]}           integer, low <= x <= high (both ends inclusive)
    {const: value}               a literal (e.g. a list or a dict that must not be parsed)

Plain nested mappings are parameter groups (``augment: {rotate: {p: 0.5}}``). A choice whose
options are mappings is *conditional*: each option is a block of parameters that exist only
when that block is picked, e.g. ``momentum`` only in the SGD-with-momentum block::

    optimizer:
      choice:
        - {name: adam, lr: {loguniform: [1.0e-4, 1.0e-2]}}
        - {name: sgd_momentum, lr: {loguniform: [1.0e-3, 0.3]}, momentum: {uniform: [0.8, 0.99]}}
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tricksweep.errors import SpecError, clip, shown

DOMAIN_KEYS = ("choice", "grid", "uniform", "loguniform", "int", "const")


@dataclass(frozen=True)
class Choice:
    options: tuple[Node, ...]
    grid: bool = False


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int  # inclusive


@dataclass(frozen=True)
class Const:
    value: Any


Block = dict  # name -> Node
Node = Choice | Uniform | IntRange | Const | Block


def is_domain(raw: Any) -> bool:
    """A one-key mapping whose key is a DSL word is a domain; other mappings are groups."""
    return isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in DOMAIN_KEYS


def parse(raw: Any, path: str = "space") -> Node:
    """Parse YAML data into a space tree, rejecting malformed domains with their path."""
    if isinstance(raw, dict) and not is_domain(raw):
        for key in raw:
            if not isinstance(key, str):
                raise SpecError(f"{clip(path)}: parameter name {shown(key)} must be a string")
        return {key: parse(value, f"{path}.{key}") for key, value in raw.items()}
    if not isinstance(raw, dict):
        return Const(finite(raw, path))
    kind, arg = next(iter(raw.items()))
    where = clip(f"{path}.{kind}")
    if kind == "const":
        return Const(finite(arg, where))
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise SpecError(f"{where} = {shown(arg)}: must be a non-empty list of options")
        return Choice(tuple(parse(o, f"{where}[{i}]") for i, o in enumerate(arg)), grid=kind == "grid")
    if not (isinstance(arg, list) and len(arg) == 2):
        raise SpecError(f"{where} = {shown(arg)}: must be a list [low, high]")
    low, high = arg
    numeric = (int,) if kind == "int" else (int, float)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, numeric) or (isinstance(v, float) and not math.isfinite(v)):
            rule = "an integer" if kind == "int" else "a finite number, not a boolean"
            raise SpecError(f"{where} {name} = {shown(v)}: must be {rule}")
    if low > high:
        raise SpecError(f"{where} = [{shown(low)}, {shown(high)}]: low is greater than high; must be low <= high")
    if kind == "int":
        return IntRange(low, high)
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where} low = {low}: must be > 0 on a log scale")
    return Uniform(float(low), float(high), log=kind == "loguniform")


def finite(value: Any, path: str) -> Any:
    """``value`` unchanged, or SpecError where it is or holds a float that is not finite (``.inf``,
    ``.nan``): no parameter means that, and Tune, Optuna and MLflow each treat it differently."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{clip(path)} = {value}: must be a finite number")
    if isinstance(value, dict):
        for key, child in value.items():
            finite(child, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            finite(child, f"{path}[{i}]")
    return value


def to_tune(node: Node, enumerate_ranges: bool = False, path: str = "space") -> Any:
    """Compile to Ray Tune's param_space (``enumerate_ranges``: every choice and int range a grid axis).
    Ray resolves domains inside a sampled block on its next pass, which is what makes conditional blocks
    work with the basic variant generator."""
    from ray import tune

    if isinstance(node, dict):
        return {k: to_tune(v, enumerate_ranges, f"{path}.{k}") for k, v in node.items()}
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Choice):
        options = [to_tune(o, enumerate_ranges, f"{path}[{i}]") for i, o in enumerate(node.options)]
        return tune.grid_search(options) if node.grid or enumerate_ranges else tune.choice(options)
    if isinstance(node, IntRange):
        if enumerate_ranges:
            return tune.grid_search(list(range(node.low, node.high + 1)))
        return tune.randint(node.low, node.high + 1)  # Ray's upper bound is exclusive
    if enumerate_ranges:  # search.check_space rejects such a space before anything compiles it
        raise ValueError(f"{path}: a continuous range cannot be enumerated")
    return tune.loguniform(node.low, node.high) if node.log else tune.uniform(node.low, node.high)


def grid_points(node: Node, enumerate_ranges: bool = False) -> int:
    """Trials one sample of the space expands to (1 without grid values)."""
    if isinstance(node, dict):
        return math.prod(grid_points(v, enumerate_ranges) for v in node.values())
    if isinstance(node, Choice):
        counts = [grid_points(o, enumerate_ranges) for o in node.options]
        return sum(counts) if node.grid or enumerate_ranges else max(counts)
    if isinstance(node, IntRange) and enumerate_ranges:
        return node.high - node.low + 1
    return 1


def without_grids(node: Node) -> Node:
    """The same space with every grid turned into a random choice (smoke runs sample 2 points)."""
    if isinstance(node, dict):
        return {k: without_grids(v) for k, v in node.items()}
    if isinstance(node, Choice):
        return Choice(tuple(without_grids(o) for o in node.options), grid=False)
    return node


def corners(node: Node) -> Iterator[Any]:
    """Concrete values covering every option and both ends of every range, each varied with the
    others held at their first value: what the validator checks against the trainable's config."""
    if isinstance(node, dict):
        firsts = {k: next(corners(v)) for k, v in node.items()}
        yield firsts
        for key, child in node.items():
            for i, value in enumerate(corners(child)):
                if i:
                    yield {**firsts, key: value}
    elif isinstance(node, Choice):
        for option in node.options:
            yield from corners(option)
    elif isinstance(node, Const):
        yield node.value
    else:
        yield node.low
        if node.high != node.low:
            yield node.high


def describe(node: Node, indent: int = 0) -> list[str]:
    """Human-readable lines of the space, for ``tricksweep validate``."""
    pad = "  " * indent
    lines: list[str] = []
    for key, child in node.items():
        if isinstance(child, dict):
            lines.append(f"{pad}{key}:")
            lines += describe(child, indent + 1)
        elif isinstance(child, Choice) and any(isinstance(o, dict) for o in child.options):
            lines.append(f"{pad}{key}: {'grid' if child.grid else 'choice'} of {len(child.options)} blocks")
            for i, option in enumerate(child.options):
                lines.append(f"{pad}  [{i}]")
                lines += describe(option if isinstance(option, dict) else {"value": option}, indent + 2)
        else:
            lines.append(f"{pad}{key}: {leaf_text(child)}")
    return lines


def leaf_text(node: Node) -> str:
    if isinstance(node, Const):
        return "null" if node.value is None else clip(str(node.value))
    if isinstance(node, Choice):
        return clip(f"{'grid' if node.grid else 'choice'} [{', '.join(leaf_text(o) for o in node.options)}]", 200)
    if isinstance(node, IntRange):
        return f"int [{node.low}, {node.high}] (inclusive)"
    return f"{'loguniform' if node.log else 'uniform'} [{node.low:g}, {node.high:g}]"


def merge(base: dict, override: dict) -> dict:
    """Deep-merge raw spaces: groups merge key by key, anything else in ``override`` replaces."""
    out = dict(base)
    for key, value in override.items():
        if (isinstance(out.get(key), dict) and not is_domain(out[key])
                and isinstance(value, dict) and not is_domain(value)):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# --- Optuna: the same space as a define-by-run function -------------------------------------

OPTUNA_SCALARS = (type(None), bool, int, float, str)


def option_labels(choice: Choice) -> list[Any]:
    """What Optuna's ``suggest_categorical`` picks between for a choice: the values themselves
    when they are scalars, else a block's ``name`` (``"adam"``) or its index (``"#1"``)."""
    if all(isinstance(o, Const) and isinstance(o.value, OPTUNA_SCALARS) for o in choice.options):
        return [o.value for o in choice.options]
    labels = []
    for i, option in enumerate(choice.options):
        name = option.get("name") if isinstance(option, dict) else option
        label = name.value if isinstance(name, Const) and isinstance(name.value, str) else f"#{i}"
        labels.append(label)
    return labels if len(set(labels)) == len(labels) else [f"#{i}" for i in range(len(labels))]


class DefineByRun:
    """An Optuna define-by-run function for a parsed space (picklable, for Tune's checkpoints).

    A choice between blocks is one categorical (``optimizer`` in {sgd, adam, ...}); the chosen
    block's parameters are suggested only then, under names of their own (``optimizer[adam].lr``),
    so Adam's and SGD's learning-rate ranges are separate Optuna parameters and an Adam trial has
    no momentum. Returns the nested config a trial receives.

        >>> import optuna
        >>> study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        >>> config = DefineByRun(parse({"lr": {"loguniform": [1e-4, 1e-1]}}))(study.ask())
    """

    def __init__(self, space: Node):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self._suggest(self.space, trial, "")

    def _suggest(self, node: Node, trial: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: self._suggest(v, trial, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Choice):
            labels = option_labels(node)
            picked = trial.suggest_categorical(path, labels) if len(labels) > 1 else labels[0]
            option = node.options[labels.index(picked)]
            if isinstance(option, Const):
                return option.value
            return self._suggest(option, trial, f"{path}[{picked}]")
        if isinstance(node, IntRange):
            return trial.suggest_int(path, node.low, node.high) if node.high > node.low else node.low
        return trial.suggest_float(path, node.low, node.high, log=node.log) if node.high > node.low else node.low


def param_names(node: Node) -> set[str]:
    """Every flattened parameter name a trial of this space can have (conditional ones included)."""
    names: set[str] = set()
    for corner in corners(node):
        names |= set(flatten(corner)) if isinstance(corner, dict) else set()
    return names

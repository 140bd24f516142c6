"""The searcher registry: one entry per searcher, saying what it can express.

Validation (``spec.py``), smoke mode and the Tuner (``runner.py``) read the entry; none of them
names a searcher. Adding a searcher is one entry here and its builder in ``searchers.py``
(imported lazily, so validating a spec never imports Ray or Optuna).

    >>> SEARCHERS["grid"].enumerates_ranges, SEARCHERS["grid"].continuous
    (True, False)
    >>> grid_points(parse({"lr": {"grid": [0.1, 0.01]}, "width": {"int": [1, 3]}}), "random")
    2
    >>> grid_points(parse({"lr": {"grid": [0.1, 0.01]}, "width": {"int": [1, 3]}}), "grid")
    6
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tricksweep import space as dsl
from tricksweep.errors import SpecError, unknown_name
from tricksweep.space import parse  # noqa: F401 - used by the doctests


@dataclass(frozen=True)
class SearcherEntry:
    """A searcher and what it can express. ``build`` is ``"module:function"``; the function takes
    ``(space, spec, history)`` (``history``: an extended sweep's lineage, ``searchers.History``,
    or None) and returns Tune's ``(search_alg, num_samples, param_space)``."""

    name: str
    description: str
    build: str
    continuous: bool  # samples uniform / loguniform ranges
    enumerates_ranges: bool  # every choice and int range becomes grid axes (each point x budget.trials)
    grid_values: bool  # expands {grid: [...]} values (each point x budget.trials)
    grid_values_with_repeats: bool  # ... also when repeats > 1
    conditional: bool = True  # a choice between blocks of parameters
    smoke_as: str | None = None  # smoke mode runs this searcher instead (one random point of a grid)

    def builder(self) -> Any:
        module, _, function = self.build.partition(":")
        return getattr(importlib.import_module(module), function)


SEARCHERS: dict[str, SearcherEntry] = {
    "random": SearcherEntry(
        "random", "Ray's variant generator; with repeats, one Optuna random sample per configuration",
        build="tricksweep.searchers:build_random", continuous=True, enumerates_ranges=False, grid_values=True,
        grid_values_with_repeats=False,
    ),
    "grid": SearcherEntry(
        "grid", "every choice and integer in the space, each point budget.trials times",
        build="tricksweep.searchers:build_grid", continuous=False, enumerates_ranges=True, grid_values=True,
        grid_values_with_repeats=True, smoke_as="random",
    ),
    "optuna_tpe": SearcherEntry(
        "optuna_tpe", "Optuna's TPE through Ray's OptunaSearch, the space as a define-by-run function",
        build="tricksweep.searchers:build_optuna_tpe", continuous=True, enumerates_ranges=False, grid_values=False,
        grid_values_with_repeats=False,
    ),
}


def entry(name: str) -> SearcherEntry:
    if name not in SEARCHERS:
        raise unknown_name("searcher", name, "searcher", SEARCHERS)
    return SEARCHERS[name]


def grid_points(space: dsl.Node, searcher: str) -> int:
    """Trials one sample of the space expands to under ``searcher`` (1 without grid axes)."""
    return dsl.grid_points(space, entry(searcher).enumerates_ranges)


def check_space(space: dsl.Node, searcher: str, repeats: int = 1, path: str = "space") -> None:
    """Reject, with the reason, a space the searcher cannot express (SpecError)."""
    found = entry(searcher)
    if not found.continuous:
        for where, node in _ranges(space, path):
            kind = "loguniform" if node.log else "uniform"
            raise SpecError(
                f"{where}: searcher {searcher!r} cannot enumerate a continuous {kind} range [{node.low}, {node.high}]; "
                f"use {{grid: [...]}} values or searcher: random"
            )
    takes_grids = found.grid_values_with_repeats if repeats > 1 else found.grid_values
    if takes_grids:
        return
    why = (f"searcher {searcher!r} with repeats = {repeats} samples each configuration once, then runs it per seed"
           if found.grid_values else f"searcher {searcher!r} samples one configuration at a time")
    for where, values in _grids(space, path):
        raise SpecError(f"{where}.grid: {why}; it cannot enumerate grid values {values}; "
                        "use {choice: [...]}, or searcher: grid")


def build(space: dsl.Node, spec: Any, history: Any = None) -> tuple[Any, int, dict[str, Any]]:
    """Tune's search algorithm, ``num_samples`` and ``param_space`` for a validated spec; ``history``
    (``searchers.History``) when extending a sweep: what its lineage ran."""
    return entry(spec.searcher).builder()(space, spec, history)


def _ranges(node: dsl.Node, path: str) -> Iterator[tuple[str, dsl.Uniform]]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _ranges(child, f"{path}.{key}")
    elif isinstance(node, dsl.Choice):
        for i, option in enumerate(node.options):
            yield from _ranges(option, f"{path}[{i}]")
    elif isinstance(node, dsl.Uniform):
        yield path, node


def _grids(node: dsl.Node, path: str) -> Iterator[tuple[str, list]]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _grids(child, f"{path}.{key}")
    elif isinstance(node, dsl.Choice):
        if node.grid:
            yield path, [dsl.leaf_text(o) if not isinstance(o, dict) else "{...}" for o in node.options]
        for i, option in enumerate(node.options):
            yield from _grids(option, f"{path}.{'grid' if node.grid else 'choice'}[{i}]")

"""The trainable contract: what tricksweep calls, and what it hands over. Written once, here.

A sweep spec's ``trainable:`` is a registered name (``classifier``, see ``trainables.TRAINABLES``)
or an import string of your own code:

- ``"mypkg.train:fit"``: a **function** ``fit(config, report)``. ``config`` is a plain ``dict`` of
  the trial's sampled hyperparameters (the DSL checks the space; nothing else does). The metrics
  it reports may be declared as ``fit.metrics = ("val_loss", ...)``.
- ``"mypkg.train"``: a **module** with ``train(config, report)``, and optionally ``Config`` (a
  pydantic model: every corner of the space is validated through it before any trial runs, and
  ``train`` receives a ``Config`` instance) and ``METRICS`` (the metric names it reports).

``train`` gets, besides ``config``, a ``report`` (``trainables.report.Report``):

- ``report(epoch=e, metrics={...}, checkpoint=<dir or None>, end=None)`` once per finished epoch
  (1-based; the epoch is ASHA's clock). ``checkpoint`` is a directory the engine copies before the
  call returns; ``end`` is ``"early_stopped"`` or ``"diverged"`` on a last report the trainable
  chose to make its last. The sweep's ``metric`` must be among the ``metrics``; when it is not,
  the first report raises ``metric 'X' was not reported; reported: a, b``.
- ``report.restore()``: the directory of the last checkpoint when the trial resumes (after a
  failure, a stop or a driver restart), else None. It is the engine's copy, removed when ``train``
  returns: read it, don't keep it.
- The engine keeps only the checkpoints its policy needs (improving epochs, the last, one per
  ``checkpoint.every_s``); its report also answers ``report.wants_checkpoint(epoch=, metrics=,
  end=)`` before the trainable writes one. Optional: a report without it keeps what it is given.
- ``report.info``: a frozen ``TrialInfo(epochs, seed, device, checkpoint_every, data)``: the
  epoch budget, the trial's seed, the torch device Ray assigned, the checkpoint cadence and the
  spec's dataset (dict). This is the one place the engine's inputs arrive.

As a convenience a ``Config`` that declares fields named like ``TrialInfo``'s (``epochs``,
``seed``, ``device``, ``checkpoint_every``, ``data``) gets them filled in from ``report.info``, as
the built-in classifier's does; a ``Config`` (or a plain dict) that does not is not given them.

Unit tests call ``train(config, ListReport(info=TrialInfo(epochs=2)))``: no Ray, no MLflow.

    >>> trainable = load("trainables.classifier")
    >>> trainable.target, "val_accuracy" in trainable.metrics
    ('trainables.classifier', True)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from trainables.report import ENGINE_FIELDS, TrialInfo

__all__ = ["ContractError", "Trainable", "TrialInfo", "load", "split_target"]


class ContractError(ValueError):
    """User code that does not meet the contract; the message says what is wrong, in one line."""


@dataclass(frozen=True)
class Trainable:
    """A trainable found by its import string: its ``train``, its ``Config`` (None: a plain dict)
    and the metrics it declares (None: checked against its first report)."""

    module: str
    function: str | None  # None: the module's ``train``
    train: Callable[..., Any]
    config: type | None
    metrics: tuple[str, ...] | None

    @property
    def target(self) -> str:
        return f"{self.module}:{self.function}" if self.function else self.module

    def make_config(self, sampled: dict[str, Any], info: TrialInfo) -> Any:
        """The ``config`` ``train`` receives: a dict, or a ``Config`` with the TrialInfo fields it
        declares filled in."""
        if self.config is None:
            return dict(sampled)
        declared = self.config.model_fields
        return self.config.model_validate(
            {**sampled, **{name: getattr(info, name) for name in ENGINE_FIELDS if name in declared}}
        )


def split_target(target: str) -> tuple[str, str | None]:
    """``"pkg.mod:fn"`` -> ``("pkg.mod", "fn")``; ``"pkg.mod"`` -> ``("pkg.mod", None)``."""
    module, _, function = target.partition(":")
    if not module or (":" in target and not function) or ":" in function:
        raise ContractError("expected 'package.module' or 'package.module:function'")
    return module, function or None


def load(target: str) -> Trainable:
    """Import ``target`` (``"pkg.mod"`` or ``"pkg.mod:fn"``) and check it against the contract.
    Raises ContractError (one line) for anything but a missing top-level module, which stays a
    ModuleNotFoundError so that the caller can say where it looked."""
    module_name, function = split_target(target)
    module = _import(module_name)
    if function is None:
        if not hasattr(module, "train"):
            raise ContractError(f"module '{module_name}' has no function train(config, report)"
                                f"{_close('train', module)}")
        train, config, metrics = module.train, getattr(module, "Config", None), getattr(module, "METRICS", None)
    else:
        if not hasattr(module, function):
            raise ContractError(f"module '{module_name}' has no attribute '{function}'{_close(function, module)}")
        train = getattr(module, function)
        config, metrics = None, getattr(train, "metrics", None)
    _check_callable(train, target)
    if config is not None and not _is_pydantic_model(config):
        raise ContractError(f"{module_name}.Config is a {type(config).__name__}, not a pydantic model")
    if metrics is not None:
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise ContractError(f"declared metrics {metrics!r}: must be a list or tuple of metric names")
        metrics = tuple(metrics)
    return Trainable(module_name, function, train, config, metrics)


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name) and module_name[len(err.name):][:1] in ("", "."):
            raise  # the target itself is missing: the caller knows where it looked
        raise ContractError(f"importing '{module_name}' failed: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any error in the user's module is reported as one line
        where = f" ({err.filename}:{err.lineno})" if isinstance(err, SyntaxError) else ""
        raise ContractError(f"importing '{module_name}' failed: {type(err).__name__}: {err}{where}") from None


def _check_callable(train: Any, target: str) -> None:
    if not callable(train):
        raise ContractError(f"'{target}' is a {type(train).__name__}, not a function train(config, report)")
    try:
        signature = inspect.signature(train)
    except (TypeError, ValueError):
        return  # builtins and some C callables have none: let the call decide
    try:
        signature.bind(None, None)
    except TypeError:
        shown = signature.replace(return_annotation=inspect.Signature.empty)
        raise ContractError(f"{getattr(train, '__name__', target)}{shown} cannot be called as "
                            "train(config, report)") from None


def _is_pydantic_model(config: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(config, type) and issubclass(config, BaseModel)


def _close(name: str, module: ModuleType) -> str:
    close = difflib.get_close_matches(name, [n for n in vars(module) if not n.startswith("_")], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""

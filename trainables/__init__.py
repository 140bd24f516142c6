"""PyTorch trainables. Nothing in this package imports Ray or MLflow.

A trainable is a module with:

- ``Config``: a pydantic model holding every hyperparameter, one field per line;
- ``METRICS``: the metric names ``train`` reports each epoch;
- ``train(cfg, report)``: trains, calling ``report(epoch=..., metrics=..., checkpoint=...)``
  once per epoch and ``report.restore()`` to resume.

Importing a trainable module must not import torch, so that specs validate quickly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trainables.report import ListReport, Report

# Plain name -> module path; imported only when used.
TRAINABLES: dict[str, str] = {
    "classifier": "trainables.classifier",
}

__all__ = ["TRAINABLES", "ListReport", "Report", "load"]


def load(name: str) -> ModuleType:
    """Import the trainable registered as ``name``: ``load("classifier").train(cfg, report)``."""
    return importlib.import_module(TRAINABLES[name])

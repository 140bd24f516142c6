"""PyTorch trainables. Nothing in this package imports Ray or MLflow.

A trainable is a module with ``train(config, report)`` (and, here, a pydantic ``Config`` holding
every hyperparameter, one field per line, and ``METRICS``), or a function ``train(config, report)``
of your own reached by an import string (``trainable: "mypkg.train:fit"``). The contract, what
``train`` receives and ``report(...)`` / ``report.restore()`` / ``report.info``, is written once,
in ``trainables/contract.py``.

Importing a trainable module must not import torch, so that specs validate quickly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trainables.report import ListReport, Report, TrialInfo

# Registered name -> import string (see trainables/contract.py); imported only when used.
TRAINABLES: dict[str, str] = {
    "classifier": "trainables.classifier",
}

__all__ = ["TRAINABLES", "ListReport", "Report", "TrialInfo", "load"]


def load(name: str) -> ModuleType:
    """Import the trainable registered as ``name``: ``load("classifier").train(cfg, report)``."""
    return importlib.import_module(TRAINABLES[name])

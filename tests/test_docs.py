"""Docstring examples are correct: the cheap ones run as doctests, here and in every module that
has them (a module with ``>>>`` lines not listed here fails the first test)."""

from __future__ import annotations

import doctest
import importlib

import pytest
from conftest import ROOT

DOCTESTED = [
    "tricksweep.asha",
    "tricksweep.records",
    "tricksweep.search",
    "tricksweep.searchers",
    "tricksweep.space",
    "trainables.report",
    "trainables.contract",
]


def test_every_module_with_examples_is_doctested():
    found = {
        ".".join(path.relative_to(base).with_suffix("").parts)
        for base in (ROOT / "src", ROOT)
        for path in (base / ("tricksweep" if base.name == "src" else "trainables")).glob("*.py")
        if ">>> " in path.read_text()
    }
    assert found == set(DOCTESTED)


@pytest.mark.parametrize("module", DOCTESTED)
def test_doctests(module):
    failed, attempted = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0

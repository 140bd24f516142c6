"""tricksweep: hyperparameter sweeps over the classic deep-learning tricks, on Ray Tune, recorded in MLflow.

    from tricksweep import run_sweep
    outcome = run_sweep("sweeps/quickstart.yaml")    # a spec file, a dict of its keys, or load_spec(...)
    outcome.best_value, outcome.best_config, outcome.experiment_id, outcome.parent_run_id

Names are imported on first use: ``import tricksweep`` (what every Ray worker does) stays light,
and only ``run_sweep`` / ``resume_sweep`` bring in Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (imported when the name is first used).
_PUBLIC = {
    "SpecError": "tricksweep.errors",
    "LoadedSpec": "tricksweep.spec",
    "SweepSpec": "tricksweep.spec",
    "load_spec": "tricksweep.spec",
    "Outcome": "tricksweep.runner",
    "run_sweep": "tricksweep.runner",
    "resume_sweep": "tricksweep.runner",
    "build_report": "tricksweep.report",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tricksweep' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)

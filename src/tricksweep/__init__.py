"""tricksweep: hyperparameter sweeps over the classic deep-learning tricks, on Ray Tune, recorded in MLflow.

    from tricksweep import load_spec, run_sweep
    outcome = run_sweep(load_spec("sweeps/quickstart.yaml"))
"""

__version__ = "0.1.0"

from tricksweep.errors import SpecError  # noqa: E402
from tricksweep.spec import LoadedSpec, SweepSpec, load_spec  # noqa: E402


def run_sweep(*args, **kwargs):
    """See ``tricksweep.runner.run_sweep`` (imported lazily: it imports Ray)."""
    from tricksweep.runner import run_sweep as _run

    return _run(*args, **kwargs)


__all__ = ["LoadedSpec", "SpecError", "SweepSpec", "__version__", "load_spec", "run_sweep"]

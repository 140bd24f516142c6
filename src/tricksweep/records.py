"""The MLflow read side: a recorded sweep and its trials, read back from the parent run and its
child runs alone, so it works for any recorded sweep, local or from a cluster. No Ray here.

    sweep = load_sweep("sqlite:////abs/mlflow.db", "quickstart")
    best, epoch = sweep.trials[0].best(sweep.metric, sweep.mode)
    lineage = load_sweep("sqlite:////abs/mlflow.db", "quickstart", lineage=True)  # and every run it extends
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A trial out of GPU memory on a whole GPU: its configuration does not fit (never the best).
INFEASIBLE = "infeasible"
# Statuses of trials that give no result: left out of effects, importance and claims.
NO_RESULT = ("failed", INFEASIBLE, "lost", "running", "")
# On the parent run of `tricksweep extend`: the parent run it extends, and every parent run before it
# (comma-separated, oldest first): the lineage.
EXTENDS_TAG = "tricksweep.extends"
LINEAGE_TAG = "tricksweep.lineage"


@dataclass
class TrialRecord:
    """One trial: its flattened params (seed included) and its per-epoch metric history.

    >>> t = TrialRecord("a_00001", "trial-00001", "completed", {"lr": 0.1, "seed": 3},
    ...                 {"val_accuracy": {1: 0.5, 2: 0.75, 3: 0.7}})
    >>> t.best("val_accuracy", "max"), t.best("val_accuracy", "max", until=1), t.epochs
    ((0.75, 2), (0.5, 1), 3)
    """

    trial_id: str
    name: str
    status: str
    params: dict[str, Any]
    history: dict[str, dict[int, float]]  # metric -> epoch -> value
    run_id: str = ""  # the child run, where it is known

    @property
    def epochs(self) -> int:
        return max((max(h) for h in self.history.values() if h), default=0)

    def best(self, metric: str, mode: str, until: int | None = None) -> tuple[float | None, int]:
        """The metric's best finite value (up to epoch ``until``) and the epoch it came at."""
        curve = {e: v for e, v in self.history.get(metric, {}).items()
                 if (until is None or e <= until) and isinstance(v, (int, float)) and math.isfinite(v)}
        if not curve:
            return None, 0
        epoch = (max if mode == "max" else min)(sorted(curve), key=curve.__getitem__)
        return float(curve[epoch]), epoch

    def config_key(self) -> tuple:
        """The configuration it ran: every param but the seed."""
        return tuple(sorted((k, repr(v)) for k, v in self.params.items() if k != "seed"))


@dataclass
class RecordedSweep:
    name: str
    uri: str
    parent_run_id: str
    spec: dict[str, Any]  # the resolved spec as run
    trials: list[TrialRecord]
    # With lineage=True: the parent runs read, oldest first (trial names then say which: g0/trial-00003);
    # else just this run's.
    lineage: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.spec["metric"]

    @property
    def mode(self) -> str:
        return self.spec["mode"]

    @property
    def repeats(self) -> int:
        return int(self.spec.get("repeats", 1))

    @property
    def max_epochs(self) -> int:
        return int(self.spec["budget"]["max_epochs"])

    @property
    def asha(self) -> bool:
        return (self.spec.get("scheduler") or {}).get("type", "asha") == "asha"

    @property
    def comparison_epoch(self) -> int:
        """The budget every trial got: ASHA's first rung, or the full budget without ASHA."""
        return int(self.spec["scheduler"].get("grace_epochs", 1)) if self.asha else self.max_epochs

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status not in NO_RESULT and t.history.get(self.metric)]


def parse_param(text: str) -> Any:
    """An MLflow param (a string) back as the scalar it was: ``"0.1"`` -> 0.1, ``"true"`` -> True.

    >>> parse_param("1e-05"), parse_param("0.1"), parse_param("adam")
    (1e-05, 0.1, 'adam')
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT.match(text):
        return float(text)  # YAML 1.1 reads Python's "1e-05" (no dot) as a string
    return value if isinstance(value, (str, int, float, bool, type(None))) else text


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def lineage_of(tags: dict[str, str], run_id: str) -> list[str]:
    """The parent runs of a sweep's lineage, oldest first, ending with ``run_id`` (its tags: ``tags``)."""
    return [r for r in tags.get(LINEAGE_TAG, "").split(",") if r] + [run_id]


def load_sweep(uri: str, name: str, *, lineage: bool = False) -> RecordedSweep:
    """The latest recorded run of sweep ``name`` (SpecError listing the sweeps found if none);
    ``lineage``: with the trials of every run it extends (``tricksweep extend``), each trial's
    name prefixed with its generation (``g0/`` the first run)."""
    import yaml

    from tricksweep.tracking import ParentRun

    parent = ParentRun.latest(uri, name)
    client = parent.client
    with tempfile.TemporaryDirectory() as tmp:
        try:
            spec = yaml.safe_load(
                Path(client.download_artifacts(parent.run_id, "spec/resolved_spec.yaml", tmp)).read_text()
            )
        except Exception:  # noqa: BLE001 - an old or partial record: fall back to the parent's params
            spec = None
    if spec is None:
        params = client.get_run(parent.run_id).data.params
        spec = {"metric": params.get("metric", "val_accuracy"), "mode": params.get("mode", "max"),
                "budget": {"max_epochs": int(params.get("budget.max_epochs", 1))},
                "scheduler": {"type": params.get("scheduler.type", "asha"),
                              "grace_epochs": int(params.get("scheduler.grace_epochs", 1))}}
    if not lineage:
        trials = load_trials(client, parent.experiment_id, parent.run_id, spec["metric"])
        return RecordedSweep(name, uri, parent.run_id, spec, trials, [parent.run_id])
    runs = lineage_of(client.get_run(parent.run_id).data.tags, parent.run_id)
    trials = []
    for generation, run_id in enumerate(runs):
        for trial in load_trials(client, parent.experiment_id, run_id, spec["metric"]):
            trial.name = f"g{generation}/{trial.name}"
            trials.append(trial)
    return RecordedSweep(name, uri, parent.run_id, spec, trials, runs)


def load_trials(client: Any, experiment_id: str, parent_run_id: str, metric: str) -> list[TrialRecord]:
    """The trials (child runs) of one parent run, by name; reruns left out."""
    from tricksweep.tracking import PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG

    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000
    )
    wanted = {metric, "train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    trials = []
    for run in runs:
        if run.data.tags.get(SWEEP_TAG) == "rerun":
            continue  # `tricksweep rerun`'s runs repeat a trial: not trials of the sweep
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics if key in wanted
        }
        status = run.data.tags.get(STATUS_TAG) or ("failed" if run.info.status == "FAILED" else "running")
        trials.append(TrialRecord(
            run.data.tags.get(TRIAL_TAG, run.info.run_id), run.info.run_name or "", status,
            {k: parse_param(v) for k, v in run.data.params.items()}, history, run.info.run_id,
        ))
    trials.sort(key=lambda t: t.name)
    return trials

"""``tricksweep rerun NAME TRIAL``: train one recorded trial again, its exact configuration and seed,
in this process (no Ray), into a new child run of the sweep's latest parent run, and say how far
its metrics are from the recorded ones.

    rerun = rerun_trial("sqlite:////work/mlflow.db", "quickstart", "trial-00003")
    rerun.max_abs_diff   # 0.0 on the CPU with one torch thread per trial

What makes a CPU rerun exact: the trial's seed (``TrialInfo.seed``) seeds torch's global generator
and the trainable's own generator (init, shuffling, dropout, augmentation); the train/validation
split and the data loaders are seeded by the dataset's options; and the rerun runs with as many
torch threads as the trial had (``resources.cpu``, as ``trial.run_trial`` sets them). With one
thread every floating-point sum is done in one fixed order, so the rerun is bit-for-bit the trial.
With N threads a reduction is split N ways; the same N on the same CPU gave equal bits here (the
classifier on digits, 3 epochs: 2 threads vs 2 threads equal, 1 vs 2 threads differing by 8.5e-8),
but that depends on the CPU and the kernels torch picks for it, so only ``resources.cpu: 1`` is
promised exact. ``torch.use_deterministic_algorithms`` is not needed on the
CPU (the nondeterministic kernels it forbids are CUDA's atomics); a GPU trial is rerun on the GPU
when there is one, and is not expected to be exact (cuDNN autotunes its kernels per run).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricksweep.errors import SpecError, did_you_mean, shown
from tricksweep.records import parse_param
from tricksweep.tracking import (
    CODE_PATHS_TAG,
    ERROR_TAG,
    PARENT_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    ParentRun,
    exception_line,
    metric_points,
    param_value,
    run_status,
)

RERUN_OF_TAG = "tricksweep.rerun_of"  # on a rerun's child run: the child run it reran
RERUN_TRIAL_TAG = "tricksweep.rerun_trial"  # its trial id; not TRIAL_TAG, which names the sweep's own trials


@dataclass
class Rerun:
    """A rerun and how it compares with the recorded trial."""

    trial_id: str
    name: str  # the trial's run name, trial-00003
    original_run_id: str
    run_id: str
    status: str
    metric: str
    mode: str
    threads: int
    device: str  # where the rerun trained: cpu, or cuda for a GPU trial on a machine with one
    recorded: dict[str, dict[int, float]]  # metric -> epoch -> value, as the trial recorded them
    rerun: dict[str, dict[int, float]] = field(default_factory=dict)  # the same, from the rerun

    def diffs(self, metric: str) -> dict[int, float]:
        """Per epoch both have: rerun - recorded (0.0 when equal, NaN against NaN included)."""
        recorded, rerun = self.recorded.get(metric, {}), self.rerun.get(metric, {})
        return {e: _diff(rerun[e], recorded[e]) for e in sorted(recorded.keys() & rerun.keys())}

    @property
    def compared(self) -> list[str]:
        """The metrics both have, but wall-clock times (``epoch_time_s``), which no rerun repeats."""
        return sorted(m for m in self.recorded.keys() & self.rerun.keys() if not _is_timing(m))

    @property
    def max_abs_diff(self) -> float:
        """The largest |rerun - recorded| over every compared metric and epoch both have."""
        return max((abs(d) for m in self.compared for d in self.diffs(m).values()), default=0.0)

    def best(self, history: dict[int, float]) -> tuple[float | None, int]:
        curve = {e: v for e, v in history.items() if math.isfinite(v)}
        if not curve:
            return None, 0
        epoch = (max if self.mode == "max" else min)(sorted(curve), key=curve.__getitem__)
        return curve[epoch], epoch


def _is_timing(metric: str) -> bool:
    return metric.endswith("_s") or "time" in metric


def _diff(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return a - b


class _EnoughEpochs(Exception):
    """Raised through the trainable once the rerun has the epochs its trial recorded."""


class RerunReport:
    """The trainable's ``report`` for a rerun: each epoch logged to the rerun's child run at once,
    checkpoints not kept, and the training stopped at the trial's last recorded epoch (a trial
    ASHA stopped is rerun as far as it went)."""

    def __init__(self, info: Any, client: Any, run_id: str, stop_after: int | None):
        self.info = info
        self.client = client
        self.run_id = run_id
        self.stop_after = stop_after
        self.history: dict[str, dict[int, float]] = {}
        self.last: dict[str, Any] = {}

    def __call__(self, *, epoch: int, metrics: dict[str, float], checkpoint: str | None = None,
                 end: str | None = None) -> None:
        points = metric_points(dict(metrics), epoch, int(time.time() * 1000))
        if points:
            self.client.log_batch(self.run_id, metrics=points)
        for point in points:
            self.history.setdefault(point.key, {})[epoch] = point.value
        self.last = {"epoch": epoch, "end": end or ""}
        if self.stop_after is not None and epoch >= self.stop_after and not end:
            raise _EnoughEpochs

    def restore(self) -> str | None:
        return None  # a rerun starts from scratch, as its trial did


def find_trial(parent: ParentRun, trial: str) -> Any:
    """The child run of ``trial`` (its trial id or its run name) in the parent's sweep; SpecError
    listing the trials there if none."""
    trials = [run for run in parent.children() if RERUN_OF_TAG not in run.data.tags]
    for run in trials:
        if trial in (run.data.tags.get(TRIAL_TAG), run.info.run_name):
            return run
    names = sorted(run.info.run_name or run.data.tags.get(TRIAL_TAG, "") for run in trials)
    ids = sorted(run.data.tags.get(TRIAL_TAG, "") for run in trials)
    hint = did_you_mean(trial, names) or did_you_mean(trial, ids)
    listed = ", ".join(names) if names else "(none)"
    sweep = parent.experiment_name
    raise SpecError(f"trial = {shown(trial)}: no trial of that name or id in sweep {sweep!r}{hint}; trials: {listed}")


def trial_config(tags: dict[str, str], trial_id: str, params: dict[str, str]) -> dict[str, Any]:
    """The trial's sampled config, nested, as ``run_trial`` received it: Tune's ``params.json`` in
    the trial's folder when the experiment folder is here, else rebuilt from the child run's
    flattened params."""
    experiment = Path(tags.get("tricksweep.storage_path", ""))
    if "://" not in str(experiment) and experiment.is_dir():
        for folder in sorted(experiment.glob(f"*_{trial_id}_*")):
            if (folder / "params.json").is_file():
                return json.loads((folder / "params.json").read_text())
    nested: dict[str, Any] = {}
    for key, text in params.items():
        *groups, leaf = key.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = parse_param(text)
    return nested


def rerun_trial(uri: str, name: str, trial: str, echo: Callable[[str], None] = print) -> Rerun:
    """Train ``trial`` of sweep ``name``'s latest run again into a new child run of its parent,
    tagged ``tricksweep.rerun_of`` and with the status it ended with; compare its metrics with the
    recorded ones."""
    from mlflow.entities import RunTag

    from tricksweep.spec import load_spec

    parent = ParentRun.latest(uri, name)
    client = parent.client
    original = find_trial(parent, trial)
    trial_id = original.data.tags.get(TRIAL_TAG, original.info.run_id)
    tags = client.get_run(parent.run_id).data.tags
    with tempfile.TemporaryDirectory() as tmp:
        # User code is imported from the folders the sweep was started with, as a resume does.
        folders = tuple(filter(None, tags.get(CODE_PATHS_TAG, "").split(os.pathsep))) or None
        loaded = load_spec(client.download_artifacts(parent.run_id, "spec/resolved_spec.yaml", tmp),
                           search_path=folders)
    if tags.get("tricksweep.smoke") == "true":
        loaded = loaded.smoke()
    spec = loaded.spec
    config = trial_config(tags, trial_id, original.data.params)
    recorded = {key: {m.step: m.value for m in client.get_metric_history(original.info.run_id, key)}
                for key in original.data.metrics}
    last_epoch = max((max(h) for h in recorded.values() if h), default=0)
    threads = max(1, int(spec.resources.cpu))

    run = client.create_run(parent.experiment_id, run_name=f"{original.info.run_name or trial_id}-rerun", tags={
        PARENT_TAG: parent.run_id, SWEEP_TAG: "rerun", RERUN_OF_TAG: original.info.run_id,
        RERUN_TRIAL_TAG: trial_id, "tricksweep.torch_threads": str(threads),
    })
    run_id = run.info.run_id
    from mlflow.entities import Param

    from tricksweep.space import flatten

    items = [Param(k, param_value(v)) for k, v in flatten(config).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    echo(f"rerunning {original.info.run_name} ({trial_id}, seed {config.get('seed', 0)}) of sweep {name}: "
         f"child run {run_id} under parent run {parent.run_id}, {threads} torch thread{'s' * (threads > 1)}")

    report = None
    try:
        report = _train(loaded, config, threads, client, run_id, stop_after=last_epoch or None)
        client.set_tag(run_id, "tricksweep.device", report.info.device)
        status = _status(report.last, spec.budget.max_epochs, original.data.tags.get(STATUS_TAG, ""))
        end_tags = {STATUS_TAG: status, "tricksweep.epochs": str(report.last.get("epoch", 0))}
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        end_tags = {STATUS_TAG: status} if status == "interrupted" else {STATUS_TAG: status,
                                                                          ERROR_TAG: exception_line(err)}
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end_tags.items()])
        client.set_terminated(run_id, run_status(status))
        raise
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end_tags.items()])
    client.set_terminated(run_id, run_status(status))
    return Rerun(trial_id, original.info.run_name or trial_id, original.info.run_id, run_id, status,
                 spec.metric, spec.mode, threads, report.info.device, recorded, report.history)


def _train(loaded: Any, config: dict[str, Any], threads: int, client: Any, run_id: str,
           stop_after: int | None) -> RerunReport:
    """The trial's training as ``trial.run_trial`` does it in a Ray worker, here in this process."""
    import torch

    from trainables.contract import load
    from trainables.report import TrialInfo

    spec = loaded.spec
    for folder in reversed(loaded.code_paths):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    trainable = load(f"{loaded.trainable.module}:{loaded.trainable.function}" if loaded.trainable.function
                     else loaded.trainable.module)
    device = "cuda" if spec.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    sampled = dict(config)
    seed = sampled.pop("seed", 0)
    data = {**spec.dataset, **sampled.pop("data", {})}
    info = TrialInfo(epochs=spec.budget.max_epochs, seed=seed, device=device,
                     checkpoint_every=spec.budget.max_epochs, data=data)  # a rerun keeps none
    report = RerunReport(info, client, run_id, stop_after)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainable.train(trainable.make_config(sampled, info), report)
    except _EnoughEpochs:
        pass
    finally:
        torch.set_num_threads(before)
    return report


def _status(last: dict[str, Any], max_epochs: int, recorded: str) -> str:
    """How the rerun ended: the trainable's own end, completed at the budget, or stopped where
    its trial stopped (and why that one stopped: ``stopped_as_recorded`` after ``stopped_by_asha``)."""
    if last.get("end"):
        return last["end"]
    if int(last.get("epoch") or 0) >= max_epochs:
        return "completed"
    return "stopped_as_recorded" if recorded.startswith("stopped") else "stopped"


def lines(rerun: Rerun) -> list[str]:
    """The comparison as printed: the metric per epoch, at the best epoch, and the verdict."""
    metric = rerun.metric
    recorded, again = rerun.recorded.get(metric, {}), rerun.rerun.get(metric, {})
    out = [f"{'epoch':>5}  {metric + ' recorded':>22}  {'rerun':>10}  diff"]
    for epoch, diff in rerun.diffs(metric).items():
        out.append(f"{epoch:>5}  {recorded[epoch]:>22.4f}  {again[epoch]:>10.4f}  {_shown_diff(diff)}")
    best, epoch = rerun.best(recorded)
    if best is not None and epoch in again:
        out.append(f"best epoch {epoch}: {metric} {best:.4f} recorded, {again[epoch]:.4f} rerun "
                   f"(diff {_shown_diff(_diff(again[epoch], best))})")
    compared = sum(len(rerun.diffs(m)) for m in rerun.compared)
    largest = rerun.max_abs_diff
    verdict = "exact" if largest == 0 else f"differs by up to {largest:.3g}"
    out.append(f"{verdict}: {compared} values of {len(rerun.compared)} metrics over {len(again)} epochs compared "
               f"(times left out); status {rerun.status}; child run {rerun.run_id} "
               f"({RERUN_OF_TAG}={rerun.original_run_id})")
    if rerun.device != "cpu":
        out.append(f"note: rerun on {rerun.device}; GPU kernels (cuDNN's autotuned ones) need not repeat "
                   "bit for bit: only CPU reruns of sweeps run with resources.cpu: 1 are promised exact")
    elif rerun.threads > 1:
        out.append(f"note: the trial ran with {rerun.threads} torch threads (resources.cpu = {rerun.threads}), "
                   "and so did the rerun; only sweeps run with resources.cpu: 1 are promised exact on the CPU "
                   "(with more threads, how sums split between them depends on the machine)")
    return out


def _shown_diff(diff: float) -> str:
    return "0" if diff == 0 else f"{diff:+.3g}"

"""The checkpoint policy: a trial keeps its improving epochs, its last one and one per `every_s`
seconds, and the best epoch is still what the sweep records, also for trials ASHA stopped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import write_spec
from mlflow.tracking import MlflowClient

from trainables.classifier import CHECKPOINT_FILE
from tricksweep.runner import run_sweep
from tricksweep.spec import load_spec
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, TRIAL_TAG
from tricksweep.trial import CheckpointDecider, CheckpointPolicy


class Clock:
    """Seconds set by the test: the decider's wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kept_epochs(policy: CheckpointPolicy, values: list[float], end_at: int | None = None) -> list[int]:
    clock = Clock()
    decider = CheckpointDecider(policy, clock)
    kept = []
    for epoch, value in enumerate(values, start=1):
        clock.now += 1.0  # one epoch a second
        end = "early_stopped" if epoch == end_at else None
        if decider.due(epoch, {policy.metric: value}, end):
            kept.append(epoch)
        if end:
            break
    return kept


def test_improving_epochs_and_the_last_are_kept_and_ties_are_not():
    accuracy = [0.5, 0.7, 0.7, 0.6, 0.8, 0.8, math.nan, 0.75]
    policy = CheckpointPolicy("val_accuracy", "max", last_epoch=8, every_s=None)
    assert kept_epochs(policy, accuracy) == [1, 2, 5, 8]
    loss = [1.0, 0.8, 0.9, 0.8, 0.5]
    assert kept_epochs(CheckpointPolicy("val_loss", "min", last_epoch=10, every_s=None), loss) == [1, 2, 5]


def test_a_trial_that_ends_itself_keeps_its_end_and_every_s_bounds_the_work_a_crash_loses():
    flat = [0.9] + [0.5] * 9
    policy = CheckpointPolicy("val_accuracy", "max", last_epoch=20, every_s=3.0)
    # One epoch a second: the first epoch 3 s after the last kept one is kept.
    assert kept_epochs(policy, flat) == [1, 4, 7, 10]
    assert kept_epochs(policy, flat, end_at=5) == [1, 4, 5]
    every_second = CheckpointPolicy("val_accuracy", "max", last_epoch=20, every_s=None, every_epochs=2)
    assert kept_epochs(every_second, flat[:6]) == [1, 2, 4, 6]


def test_asking_first_and_then_reporting_decides_once_per_epoch():
    clock = Clock()
    policy = CheckpointPolicy("val_accuracy", "max", last_epoch=5, every_s=1.0)
    decider = CheckpointDecider(policy, clock)
    assert decider.due(1, {"val_accuracy": 0.5}, None)
    clock.now = 0.5
    assert not decider.due(2, {"val_accuracy": 0.4}, None)
    clock.now = 5.0  # the checkpoint took long: asking again for epoch 2 gives the same answer
    assert not decider.due(2, {"val_accuracy": 0.4}, None)


ASHA_SWEEP = """\
name: ckpt_policy
metric: val_accuracy
mode: max
budget: {trials: 6, max_epochs: 6}
scheduler: {type: asha, grace_epochs: 1, reduction_factor: 2}
seed: 11
checkpoint: {every_s: null, keep: all}
space:
  model: {name: mlp, width: 16, depth: 1}
  batch_size: 256
  optimizer: {name: sgd, lr: {loguniform: [1.0e-3, 0.3]}}
  dropout: {choice: [0.0, 0.5]}
"""


@pytest.fixture(scope="module")
def policy_run(ray_local, tmp_path_factory, new_store):
    folder = tmp_path_factory.mktemp("ckpt_policy")
    uri = new_store(folder)
    outcome = run_sweep(load_spec(write_spec(folder, ASHA_SWEEP)), tracking_uri=uri, storage=str(folder / "runs"),
                        echo=lambda _: None)
    return outcome, MlflowClient(uri)


@pytest.mark.slow
def test_each_trial_persists_its_improving_epochs_and_last_and_the_sweep_records_the_best_epoch(policy_run):
    outcome, client = policy_run
    runs = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    children = {r.data.tags[TRIAL_TAG]: r for r in runs}
    trial_dirs = [d for d in Path(outcome.experiment_path).iterdir() if d.is_dir() and d.name.startswith("run_trial")]
    assert len(trial_dirs) == len(children) == 6
    statuses, saved, epochs_run = set(), 0, 0
    for trial_dir in trial_dirs:
        trial_id = next(t for t in children if t in trial_dir.name)
        child = children[trial_id]
        history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        kept = sorted(torch.load(c / CHECKPOINT_FILE, weights_only=True)["epoch"]
                      for c in trial_dir.glob("checkpoint_*"))
        improving, best = [], -math.inf
        for epoch, value in history:
            if value > best:
                improving.append(epoch)
                best = value
        status = child.data.tags[STATUS_TAG]
        statuses.add(status)
        # The last epoch is kept when the trial ran to the end; one ASHA stopped keeps its best.
        last = [6] if status == "completed" else []
        assert kept == sorted(set(improving + last)), (trial_id, status, history)
        saved, epochs_run = saved + len(kept), epochs_run + len(history)
    assert "stopped_by_asha" in statuses and "completed" in statuses
    assert saved < epochs_run, "the policy saved every epoch"

    # The parent's best checkpoint is the best trial's best epoch (the first epoch reaching it).
    best_child = children[outcome.best.trial_id]
    history = sorted((m.step, m.value) for m in client.get_metric_history(best_child.info.run_id, "val_accuracy"))
    best_epoch, best_value = max(history, key=lambda point: (point[1], -point[0]))
    state = torch.load(client.download_artifacts(outcome.parent_run_id, f"best_checkpoint/{CHECKPOINT_FILE}"),
                       weights_only=True)
    assert (state["epoch"], state["metrics"]["val_accuracy"]) == (best_epoch, pytest.approx(best_value))

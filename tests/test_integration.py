"""A real ASHA sweep on a real local Ray, then the MLflow store read back as a user's UI would."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from conftest import write_spec
from failing_trainable import ERROR
from mlflow.tracking import MlflowClient

from tricksweep.runner import run_sweep
from tricksweep.spec import load_spec
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, TRIAL_TAG

ASHA_SWEEP = """\
name: asha_integration
metric: val_accuracy
mode: max
budget: {trials: 10, max_epochs: 6}
scheduler: {type: asha, grace_epochs: 1, reduction_factor: 2}
seed: 7
registry: false  # the registry has tests of its own (test_registry.py)
resources: {cpu: 0.5}  # two trials at once on the tests' 1-CPU Ray: the writer records them side by side
space:
  model: {name: mlp, width: 32, depth: 1}
  batch_size: 128
  optimizer:
    choice:
      - {name: adam, lr: {loguniform: [1.0e-4, 3.0e-2]}}
      - {name: sgd_momentum, lr: {loguniform: [1.0e-4, 0.1]}, momentum: {uniform: [0.5, 0.95]}}
      - {name: sgd, lr: 1.0e+4}
  early_stopping: {choice: [{patience: null}, {patience: 1, min_delta: 1.0, monitor: val_loss}]}
"""
STATUSES = {"completed", "stopped_by_asha", "early_stopped", "diverged", "failed"}


@pytest.fixture(scope="module")
def asha_run(ray_local, tmp_path_factory, new_store):
    folder = tmp_path_factory.mktemp("asha")
    uri = new_store(folder)
    outcome = run_sweep(
        load_spec(write_spec(folder, ASHA_SWEEP)), tracking_uri=uri, storage=str(folder / "runs"), echo=lambda _: None
    )
    client = MlflowClient(uri)
    runs = client.search_runs([outcome.experiment_id], max_results=1000)
    return outcome, client, runs


def children_of(runs, parent_id):
    return [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_id]


def test_one_parent_and_one_child_per_trial(asha_run):
    outcome, _, runs = asha_run
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert [p.info.run_id for p in parents] == [outcome.parent_run_id]
    children = children_of(runs, outcome.parent_run_id)
    assert len(children) == 10 == len(outcome.trials)
    assert {c.data.tags[TRIAL_TAG] for c in children} == {r.trial_id for r in outcome.trials}


def test_metric_history_has_one_point_per_reported_epoch(asha_run):
    outcome, client, runs = asha_run
    epochs = {r.trial_id: r.epochs for r in outcome.trials}
    for child in children_of(runs, outcome.parent_run_id):
        trial = child.data.tags[TRIAL_TAG]
        for key in ("val_accuracy", "val_loss", "train_loss", "lr", "epoch_time_s"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs[trial] + 1)), (trial, key, steps)


def test_every_child_says_how_it_ended(asha_run):
    outcome, _, runs = asha_run
    children = children_of(runs, outcome.parent_run_id)
    statuses = [c.data.tags.get(STATUS_TAG) for c in children]
    assert set(statuses) <= STATUSES, statuses
    assert "stopped_by_asha" in statuses
    for child in children:
        status = child.data.tags[STATUS_TAG]
        epochs = int(child.data.tags["tricksweep.epochs"])
        if status == "stopped_by_asha":
            assert child.data.tags["tricksweep.rung"] == str(epochs) and epochs in (1, 2, 4)
        if status == "completed":
            assert epochs == 6
        assert child.info.status == "FINISHED"


def test_divergence_and_early_stopping_are_results_not_crashes(asha_run):
    outcome, _, runs = asha_run
    assert outcome.errors == 0
    for child in children_of(runs, outcome.parent_run_id):
        params, status = child.data.params, child.data.tags[STATUS_TAG]
        if params["optimizer.name"] == "sgd":
            assert status == "diverged"
        elif params["early_stopping.patience"] == "1" and int(child.data.tags["tricksweep.epochs"]) == 2:
            assert status == "early_stopped"
    assert "diverged" in {c.data.tags[STATUS_TAG] for c in children_of(runs, outcome.parent_run_id)}


def test_only_active_conditional_parameters_are_logged(asha_run):
    outcome, _, runs = asha_run
    for child in children_of(runs, outcome.parent_run_id):
        params = child.data.params
        assert "seed" in params
        if params["optimizer.name"] == "sgd_momentum":
            assert "optimizer.momentum" in params
        else:
            assert "optimizer.momentum" not in params


def test_parent_has_spec_leaderboard_and_best_checkpoint(asha_run):
    outcome, client, runs = asha_run
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["budget.max_epochs"] == "6"
    assert parent.data.params["scheduler.type"] == "asha"
    assert parent.data.tags["tricksweep.scheduler"] == "asha"
    assert parent.data.tags["tricksweep.best_trial"] == outcome.best.trial_id
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(outcome.best_value)
    best_child = client.get_run(parent.data.tags["tricksweep.best_run_id"])
    assert best_child.data.tags[TRIAL_TAG] == outcome.best.trial_id
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"leaderboard.csv", "spec", "best_checkpoint"} <= artifacts
    assert {a.path for a in client.list_artifacts(outcome.parent_run_id, "best_checkpoint")} == {
        "best_checkpoint/state.pt",
        "best_checkpoint/best_config.yaml",
    }
    csv_text = Path(client.download_artifacts(outcome.parent_run_id, "leaderboard.csv")).read_text()
    assert csv_text.count("\n") == 11 and outcome.best.trial_id in csv_text.splitlines()[1]


def test_leaderboard_is_ranked_by_each_trials_best_epoch(asha_run):
    outcome, client, runs = asha_run
    values = [row.mean for row in outcome.leaderboard if row.mean is not None]
    assert values == sorted(values, reverse=True)
    best = outcome.best
    child = next(c for c in children_of(runs, outcome.parent_run_id) if c.data.tags[TRIAL_TAG] == best.trial_id)
    history = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert max(m.value for m in history) == pytest.approx(outcome.best_value)


def test_each_trial_keeps_only_its_best_and_last_checkpoint(asha_run):
    import torch

    outcome, client, runs = asha_run
    children = {c.data.tags[TRIAL_TAG]: c for c in children_of(runs, outcome.parent_run_id)}
    trial_dirs = [d for d in Path(outcome.experiment_path).iterdir() if d.is_dir() and d.name.startswith("run_trial")]
    assert len(trial_dirs) == 10
    for trial_dir in trial_dirs:
        kept = [torch.load(c / "state.pt", weights_only=True) for c in sorted(trial_dir.glob("checkpoint_*"))]
        trial_id = next(t for t in children if t in trial_dir.name)
        history = client.get_metric_history(children[trial_id].info.run_id, "val_accuracy")
        if not kept:  # diverged in its first epoch: nothing was ever saved
            continue
        assert len(kept) <= 2, trial_dir.name
        # Improving epochs and the last are saved (a diverged last one, with NaN metrics, is not).
        saved = [m for m in history if math.isfinite(m.value)]
        # ASHA's stop or a divergence may follow an epoch that did not improve, so was not saved.
        if children[trial_id].data.tags[STATUS_TAG] in ("completed", "early_stopped"):
            assert kept[-1]["epoch"] == max(m.step for m in saved)  # the latest survives, for resume
        assert max(s["metrics"]["val_accuracy"] for s in kept) == pytest.approx(max(m.value for m in saved))


def test_a_failing_trial_is_tagged_failed_with_its_error(ray_local, tmp_path, tracking_uri):
    spec = write_spec(
        tmp_path,
        "name: failing\ntrainable: failing_trainable\nmetric: val_accuracy\nmode: max\n"
        "budget: {trials: 1, max_epochs: 3}\n"
        "scheduler: {type: none}\nsearcher: grid\n"
        "space: {model: {name: mlp, width: 8}, dropout: {grid: [0.0, 0.5]}}\n",
    )
    uri = tracking_uri
    outcome = run_sweep(load_spec(spec), tracking_uri=uri, storage=str(tmp_path / "runs"), echo=lambda _: None)
    assert outcome.errors == 1
    client = MlflowClient(uri)
    children = {
        c.data.params["dropout"]: c
        for c in children_of(client.search_runs([outcome.experiment_id]), outcome.parent_run_id)
    }
    assert children["0.5"].data.tags[STATUS_TAG] == "failed"
    assert children["0.5"].info.status == "FAILED"
    assert children["0.5"].data.tags["tricksweep.error"].startswith(f"RuntimeError: {ERROR} (at ")
    assert "failing_trainable.py:" in children["0.5"].data.tags["tricksweep.error"]  # where in the user's code
    assert [m.step for m in client.get_metric_history(children["0.5"].info.run_id, "val_accuracy")] == [1]
    assert children["0.0"].data.tags[STATUS_TAG] == "completed"
    assert {r.status for r in outcome.trials} == {"failed", "completed"}


def test_trials_keep_tunes_result_files_and_no_tensorboard_events(asha_run):
    # The record reads result.json back; TensorBoard's logger would import torch into the driver.
    outcome, _, _ = asha_run
    trial_dirs = [d for d in Path(outcome.experiment_path).iterdir() if d.is_dir() and d.name.startswith("run_trial")]
    assert trial_dirs
    for trial_dir in trial_dirs:
        assert (trial_dir / "result.json").stat().st_size and (trial_dir / "progress.csv").stat().st_size
        assert not list(trial_dir.glob("events.out.tfevents*")), trial_dir.name
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ, "the switch is scoped to the fit"

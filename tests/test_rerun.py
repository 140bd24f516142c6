"""``tricksweep rerun NAME TRIAL``: a recorded trial trained again, in a new child run of the sweep's
parent run, reproduces its recorded metrics exactly on the CPU (one torch thread per trial).

One real sweep on the session Ray (2 trials x 3 epochs, resources.cpu: 1) is rerun trial by trial."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tricksweep.cli import main
from tricksweep.records import load_sweep
from tricksweep.rerun import RERUN_OF_TAG, rerun_trial, trial_config
from tricksweep.runner import run_sweep
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG, ParentRun

pytestmark = pytest.mark.slow  # whole sweeps on Ray: the full suite's, not the fast lane's

NAME = "rerun-me"
SPEC = {
    "name": NAME,
    "trainable": "classifier",
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "metric": "val_accuracy",
    "mode": "max",
    "budget": {"trials": 2, "max_epochs": 3},
    "scheduler": {"type": "none"},
    "resources": {"cpu": 1},
    "registry": False,
    "space": {
        "model": {"name": "cnn", "width": 8},
        "optimizer": {"name": "adam", "lr": 0.01},
        "dropout": {"choice": [0.0, 0.2]},
    },
}


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory, new_store):
    folder = tmp_path_factory.mktemp("rerun")
    uri = new_store(folder)
    outcome = run_sweep(SPEC, tracking_uri=uri, storage=str(folder / "runs"), echo=lambda _: None)
    assert outcome.status == "completed", outcome.error
    parent = ParentRun.latest(uri, NAME)
    return {"uri": uri, "parent": parent, "children": {c.info.run_name: c for c in parent.children()}}


def histories(client, run_id: str, keys) -> dict[str, dict[int, float]]:
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}


def test_rerun_reproduces_a_cpu_trial_exactly(sweep, capsys):
    parent, original = sweep["parent"], sweep["children"]["trial-00001"]
    assert main(["rerun", NAME, "trial-00001", "--tracking-uri", sweep["uri"]]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    client = parent.client
    [rerun] = [c for c in parent.children() if c.data.tags.get(RERUN_OF_TAG) == original.info.run_id]
    tags = rerun.data.tags
    assert (tags[PARENT_TAG], tags[SWEEP_TAG], tags[STATUS_TAG]) == (parent.run_id, "rerun", "completed")
    assert TRIAL_TAG not in tags  # a resume must never take it for the trial's own run
    assert rerun.info.status == "FINISHED"
    assert rerun.data.params == original.data.params  # the same config and seed

    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
    recorded = histories(client, original.info.run_id, keys)
    again = histories(client, rerun.info.run_id, keys)
    assert set(recorded["val_accuracy"]) == {1, 2, 3}
    assert again == recorded  # bit for bit, every epoch

    best = max(recorded["val_accuracy"].values())
    epoch = min(e for e, v in recorded["val_accuracy"].items() if v == best)
    assert f"best epoch {epoch}: val_accuracy {best:.4f} recorded, {best:.4f} rerun (diff 0)" in out
    assert out[-1].startswith("exact: ")
    assert f"{RERUN_OF_TAG}={original.info.run_id}" in out[-1]
    assert [line.split()[-1] for line in out if line.split()[:1] in (["1"], ["2"], ["3"])] == ["0", "0", "0"]
    # The sweep's trials are still its two trials: the leaderboard and the report leave reruns out.
    assert sorted(t.name for t in load_sweep(sweep["uri"], NAME).trials) == ["trial-00000", "trial-00001"]


def test_rerun_by_trial_id(sweep):
    original = sweep["children"]["trial-00000"]
    said: list[str] = []
    with contextlib.redirect_stdout(io.StringIO()):
        rerun = rerun_trial(sweep["uri"], NAME, original.data.tags[TRIAL_TAG], echo=said.append)
    assert rerun.original_run_id == original.info.run_id
    assert (rerun.status, rerun.threads, rerun.max_abs_diff) == ("completed", 1, 0.0)
    assert "epoch_time_s" not in rerun.compared and "val_loss" in rerun.compared
    assert said[0].startswith(f"rerunning trial-00000 ({original.data.tags[TRIAL_TAG]}, seed ")


def test_config_from_mlflow_params_equals_tunes(sweep):
    """Without Tune's experiment folder (another machine's storage), the flattened MLflow params
    rebuild the nested config Tune gave the trial."""
    parent = sweep["parent"]
    tags = parent.client.get_run(parent.run_id).data.tags
    for child in sweep["children"].values():
        trial_id = child.data.tags[TRIAL_TAG]
        [params_json] = Path(tags["tricksweep.storage_path"]).glob(f"*_{trial_id}_*/params.json")
        from_tune = trial_config(tags, trial_id, child.data.params)
        assert from_tune == json.loads(params_json.read_text())
        assert trial_config({}, trial_id, child.data.params) == from_tune


@pytest.mark.parametrize(("argv", "message"), [
    ([NAME, "trial-00007"], "error: trial = 'trial-00007': no trial of that name or id in sweep 'rerun-me' "
                            "(did you mean 'trial-00001'?); trials: trial-00000, trial-00001"),
    (["rerun-you", "trial-00000"], "error: sweep = 'rerun-you': no sweep of that name in "),
])
def test_unknown_sweep_or_trial_is_one_line(sweep, capsys, argv, message):
    assert main(["rerun", *argv, "--tracking-uri", sweep["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err


def test_a_trial_stopped_early_is_rerun_as_far_as_it_went(sweep):
    """A trial ASHA stopped at epoch 1 recorded one epoch; its rerun is told to stop after the last
    recorded epoch (here 1, of this 3-epoch trial), trains that one, equal, and stops."""
    import tempfile

    from tricksweep.rerun import _status, _train
    from tricksweep.spec import load_spec

    parent = sweep["parent"]
    client = parent.client
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_spec(client.download_artifacts(parent.run_id, "spec/resolved_spec.yaml", tmp))
    tags = client.get_run(parent.run_id).data.tags
    original = sweep["children"]["trial-00000"]
    config = trial_config(tags, original.data.tags[TRIAL_TAG], original.data.params)
    run_id = client.create_run(parent.experiment_id, tags={SWEEP_TAG: "rerun"}).info.run_id
    report = _train(loaded, config, 1, client, run_id, stop_after=1)
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]
    assert report.history["val_accuracy"] == {1: histories(client, original.info.run_id, ["val_accuracy"])[
        "val_accuracy"][1]}
    assert _status(report.last, 3, "stopped_by_asha") == "stopped_as_recorded"
    client.set_terminated(run_id)

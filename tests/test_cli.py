"""The CLI as a user meets it: run from a folder with no flags, default MLflow store, printed summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from tricksweep.asha import expected_epochs as asha_expected_epochs
from tricksweep.asha import rungs as asha_rungs
from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, resolve_tracking_uri


def test_run_smoke_from_a_users_folder(ray_local, in_tmp: Path, capsys):
    assert main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "top 2 of 2 trials by val_accuracy" in out
    assert "best val_accuracy:" in out
    assert f"sqlite:///{in_tmp / 'mlflow.db'}" in out and "tricksweep ui" in out
    # Defaults land in the current folder, as absolute paths.
    assert (in_tmp / "mlflow.db").exists() and (in_tmp / "runs").is_dir()
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment.artifact_location == (in_tmp / "mlruns" / "quickstart").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # parent + 2 trials
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(children) == 2  # both ended with a status, no error, and reported the metric
    assert all(r.data.tags.get(STATUS_TAG) not in (None, "failed") and "val_accuracy" in r.data.metrics
               for r in children)
    # The report follows the run: 2 trials give a leaderboard and say effects are not estimable.
    assert "effects not estimable: 2 finished trials (need at least 5)" in out
    assert (in_tmp / "reports" / "quickstart" / "report.html").exists()


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None, cwd=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert resolve_tracking_uri(None, None, cwd=tmp_path) == "http://127.0.0.1:5001"
    assert resolve_tracking_uri(None, "sqlite:///spec.db", cwd=tmp_path) == f"sqlite:///{tmp_path / 'spec.db'}"
    assert resolve_tracking_uri("http://flag:5000", "sqlite:///spec.db", cwd=tmp_path) == "http://flag:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db", None, cwd=tmp_path) == "sqlite:////abs/x.db"


def test_validate_prints_space_trials_and_budget(capsys):
    assert main(["validate", str(ROOT / "sweeps" / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert "valid sweep 'quickstart'" in out
    assert "optimizer: choice of 5 blocks" in out and "momentum: uniform [0.8, 0.99]" in out
    assert "trials: 32 (random searcher)" in out
    assert "at most 960 epochs (32 trials x 30)" in out and "rungs at epochs [2, 6, 18]" in out


def test_asha_budget_arithmetic():
    assert asha_rungs(30, 2, 3) == [2, 6, 18]
    assert asha_rungs(6, 1, 2) == [1, 2, 4]
    assert asha_rungs(10, 1, 2.5) == [1, 3, 7]  # Ray stops at the first whole epoch past 2.5 and 6.25
    assert asha_rungs(27, 1, 3) == [1, 3, 9]  # the milestone at 27 = max_epochs stops nothing
    # 9 trials, rungs 1 and 3 of 9 epochs, factor 3: 9x1 + 3x2 + 1x6
    assert asha_expected_epochs(9, 9, 1, 3) == 9 + 6 + 6


def test_ls_lists_trainables_fragments_and_sweeps(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("classifier", "augmentation", "init", "optimizer", "regularization", "sweeps/quickstart.yaml"):
        assert name in out


def test_error_line_is_the_exception_not_a_trailing_help_link(tmp_path: Path):
    from types import SimpleNamespace

    from tricksweep.callbacks import error_line

    error_file = tmp_path / "error.txt"
    error_file.write_text(
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for Config\n"
        "dropout\n  Input should be less than 1\n"
        "    For further information visit https://errors.pydantic.dev/2.14/v/less_than\n"
    )
    line = error_line(SimpleNamespace(error_file=str(error_file)))
    assert line == "pydantic_core._pydantic_core.ValidationError: 1 validation error for Config"


def test_a_sweep_whose_experiment_was_deleted_in_the_ui_records_again(tracking_uri: str):
    from tricksweep.tracking import ParentRun

    client = MlflowClient(tracking_uri)
    client.delete_experiment(client.create_experiment("gone"))
    sweep = ParentRun(tracking_uri, "gone")
    sweep.start("gone-1", {"a": 1}, {})
    assert client.get_experiment(sweep.experiment_id).lifecycle_stage == "active"
    assert client.get_run(sweep.run_id).data.params == {"a": "1"}


def test_credentials_in_uris_are_not_logged_as_params():
    from tricksweep.tracking import param_value

    assert param_value("http://bob:s3cret@mlflow.internal:5000") == "http://***@mlflow.internal:5000"
    assert param_value("s3://bucket/runs") == "s3://bucket/runs"

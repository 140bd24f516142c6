"""Every shipped sweep validates, and runs in smoke mode (2 trials x 2 epochs) on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from tricksweep.cli import main
from tricksweep.runner import run_sweep
from tricksweep.spec import load_spec
from tricksweep.tracking import STATUS_TAG

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_shipped_sweeps_exist():
    names = {p.name for p in SWEEPS}
    assert {"quickstart.yaml", "tricks_digits.yaml"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_validates(path: Path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trials:" in out and "epoch budget:" in out


def test_tricks_digits_includes_every_fragment():
    loaded = load_spec(ROOT / "sweeps" / "tricks_digits.yaml")
    assert set(loaded.fragments) == {p.stem for p in (ROOT / "search_spaces").glob("*.yaml")}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_runs_in_smoke_mode(path: Path, ray_local, tracking_uri, tmp_path):
    outcome = run_sweep(load_spec(path), smoke_test=True, tracking_uri=tracking_uri, storage=str(tmp_path / "runs"), echo=lambda _: None)
    assert outcome.errors == 0
    assert len(outcome.rows) == 2
    assert all(r.epochs >= 1 and r.value is not None for r in outcome.rows)
    client = MlflowClient(tracking_uri)
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    assert len(children) == 2
    assert all(STATUS_TAG in c.data.tags for c in children)

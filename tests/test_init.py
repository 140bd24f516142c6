"""``tricksweep init DIR``: the project it writes validates and runs in smoke mode as written, from
its own folder, its code reached only by import string (a user's first hour)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG


@pytest.mark.slow
def test_init_writes_a_project_that_validates_and_runs(ray_local, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["init", "my-proj"]) == 0
    out = capsys.readouterr().out
    assert "cd my-proj" in out and "tricksweep run sweeps/my_proj.yaml --smoke" in out
    readme = (ROOT / "README.md").read_text()
    for command in ("tricksweep init myproj", "tricksweep validate sweeps/myproj.yaml",
                    "tricksweep run sweeps/myproj.yaml --smoke"):
        assert command in readme, f"the README's first-hour flow lost {command!r}"
    project = tmp_path / "my-proj"
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "my_proj/__init__.py", "my_proj/data.py", "my_proj/nets.py", "sweeps/my_proj.yaml",
    ]
    assert "REPLACE ME" in (project / "my_proj" / "nets.py").read_text()

    monkeypatch.chdir(project)
    assert main(["validate", "sweeps/my_proj.yaml"]) == 0
    out = capsys.readouterr().out
    assert "my_proj.nets:make_net" in out and "trials: 16" in out

    assert main(["run", "sweeps/my_proj.yaml", "--smoke", "--no-report"]) == 0
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("my_proj")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(children) == 2
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha", "early_stopped"}
    assert all(c.data.params["model.name"] == "my_proj.nets:make_net" for c in children)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "full"], "init full: not empty; give a new or empty folder"),
        (["init", "new", "--package", "my-pkg"], "--package 'my-pkg': must be a Python identifier"),
    ],
)
def test_init_refuses_in_one_line(tmp_path: Path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" or err.strip().startswith(f"error: {message}")
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"

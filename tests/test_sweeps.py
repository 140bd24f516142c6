"""Every shipped sweep validates, and runs in smoke mode (2 trials x 2 epochs) on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import synthetic_data
from conftest import ROOT, unregistered
from mlflow.tracking import MlflowClient

from tricksweep.cli import main
from tricksweep.runner import run_sweep
from tricksweep.spec import LoadedSpec, load_spec
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


def runnable_here(loaded: LoadedSpec, tmp_path: Path, tracking_uri: str) -> LoadedSpec:
    """What a shipped sweep needs to smoke-run in tests: CPU only, tiny synthetic files in the
    dataset's real format instead of a download, and the sweeps it takes weights from run first
    (in smoke mode)."""
    spec = loaded.spec
    spec.resources = spec.resources.model_copy(update={"cpu": 1, "gpu": 0})
    spec.registry = None  # registering the best model has tests of its own (test_registry.py)
    writers = {
        "mnist": synthetic_data.write_idx,
        "fashion_mnist": lambda root: synthetic_data.write_idx(root, "FashionMNIST"),
        "cifar10": synthetic_data.write_cifar10,
    }
    if spec.dataset["name"] in writers:
        spec.dataset = {
            **spec.dataset,
            "root": str(writers[spec.dataset["name"]](tmp_path / "data")),
            "download": False,
        }
    for name in _source_sweeps(loaded.raw_space):
        if MlflowClient(tracking_uri).get_experiment_by_name(name) is not None:
            continue  # smoke-run already, in this module's store
        run_sweep(
            unregistered(ROOT / "sweeps" / f"{name}.yaml"),
            smoke_test=True,
            tracking_uri=tracking_uri,
            storage=str(tmp_path / "runs"),
            echo=lambda _: None,
        )
    return loaded


def _source_sweeps(raw: object) -> list[str]:
    if isinstance(raw, dict):
        return ([raw["sweep"]] if set(raw) == {"sweep"} else []) + [n for v in raw.values() for n in _source_sweeps(v)]
    return [n for v in raw for n in _source_sweeps(v)] if isinstance(raw, list) else []


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory, new_store) -> str:
    # One store for the smoke runs: transfer_digits reuses pretrain_digits' run.
    return new_store(tmp_path_factory.mktemp("smoke"))


# quickstart.yaml smoke-runs through the CLI in tests/test_cli.py, with the same checks: a sweep less here.
SMOKE_HERE = [p for p in SWEEPS if p.name != "quickstart.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("path", SMOKE_HERE, ids=[p.stem for p in SMOKE_HERE])
def test_runs_in_smoke_mode(path: Path, ray_local, smoke_store, tmp_path, monkeypatch):
    tracking_uri = smoke_store
    monkeypatch.setenv("TRICKSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    loaded = runnable_here(load_spec(path), tmp_path, tracking_uri)
    outcome = run_sweep(
        loaded, smoke_test=True, tracking_uri=tracking_uri, storage=str(tmp_path / "runs"), echo=lambda _: None
    )
    assert outcome.errors == 0
    assert len(outcome.trials) == 2
    assert all(r.epochs >= 1 and r.best("val_accuracy", "max")[0] is not None for r in outcome.trials)
    client = MlflowClient(tracking_uri)
    children = client.search_runs(
        [outcome.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'"
    )
    assert len(children) == 2
    assert all(STATUS_TAG in c.data.tags for c in children)

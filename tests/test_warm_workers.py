"""A sweep that starts its own local Ray puts its trials in the workers Ray prestarted, which imported
torch, torch._dynamo and ray.tune while the driver set up MLflow (runner.ensure_ray, prestarted_actors)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, write_spec
from mlflow.tracking import MlflowClient

from tricksweep.tracking import PARENT_TAG

SPEC = """\
name: warm_workers
trainable: "warm_worker_trainable:train"
metric: score
mode: max
budget: {{trials: {trials}, max_epochs: 1}}
scheduler: {{type: none}}
resources: {{cpu: 1}}
space:
  width: {{choice: [1, 2]}}
"""


@pytest.mark.scenario  # a driver process of its own, with its own Ray
def test_trials_land_in_prestarted_workers_that_imported_torch(tmp_path: Path):
    shutil.copy(TESTS / "warm_worker_trainable.py", tmp_path)
    (tmp_path / "sweeps").mkdir()
    from ray._private.utils import get_num_cpus

    trials = get_num_cpus()  # one per worker Ray prestarts: then preloading them pays (warm_workers_pay_off)
    write_spec(tmp_path / "sweeps", SPEC.format(trials=trials), "warm.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "tricksweep.cli", "run", "sweeps/warm.yaml", "--tracking-uri", uri,
                           "--no-report"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("warm_workers")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(children) == trials
    for child in children:
        # Started before the parent run, which the driver creates after ray.init: Ray prestarted it.
        assert child.data.metrics["process_started"] < parent.info.start_time / 1000
        assert child.data.metrics["dynamo_preloaded"] == 1.0


@pytest.mark.parametrize(("change", "pays"), [
    ({}, True),
    ({"resources": {"cpu": 2}}, False),  # half the prestarted workers would idle with torch loaded
    ({"max_concurrent_trials": 1}, False),
    ({"resources": {"cpu": 1, "gpu": 1}}, False),  # torch imported before Ray sets CUDA_VISIBLE_DEVICES
])
def test_workers_are_warmed_only_when_every_one_holds_a_trial(change, pays, monkeypatch):
    import ray._private.utils

    from tricksweep.runner import warm_workers_pay_off
    from tricksweep.spec import load_spec

    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: 2)
    raw = {"name": "w", "trainable": "classifier", "metric": "val_accuracy", "mode": "max",
           "budget": {"trials": 4, "max_epochs": 1}, "space": {"model": {"name": "mlp"}}, **change}
    assert warm_workers_pay_off(load_spec(raw)) is pays

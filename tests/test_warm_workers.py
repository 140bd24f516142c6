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
    # Every worker this Ray starts imported torch._dynamo before its trial (the trainable builds no
    # optimizer). Whether a trial's worker is one Ray prestarted (created before the parent run, which
    # the driver creates after ray.init) is a race under load: a prestarted worker still importing
    # when Tune asks can lose to a new one. On a quiet machine both trials land in prestarted ones;
    # the placement itself is checked below without the race.
    assert all(child.data.metrics["dynamo_preloaded"] == 1.0 for child in children)
    prestarted = [c for c in children if c.data.metrics["process_started"] < parent.info.start_time / 1000]
    print(f"{len(prestarted)} of {len(children)} trials in workers Ray prestarted")


def test_while_fitted_tunes_trial_actors_go_without_the_runtime_env_that_keeps_them_from_prestarted_workers():
    from ray.tune.execution.class_cache import _ActorClassCache

    from tricksweep.runner import prestarted_actors

    class Trainable:
        pass

    assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]  # Tune's own: PL_DISABLE_FORK
    with prestarted_actors(True):
        assert not _ActorClassCache().get(Trainable)._default_options.get("runtime_env")
    assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]  # restored after the sweep
    with prestarted_actors(False):  # a cluster, or a Ray this process did not start: Tune's as it is
        assert _ActorClassCache().get(Trainable)._default_options["runtime_env"]


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

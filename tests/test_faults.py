"""Fault tolerance with real processes: a worker node dies mid-trial; the trials it ran resume
from their checkpoints on the surviving node and their MLflow histories have no gap or repeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import TESTS, write_spec
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG

NODE_CRASH_SPEC = """\
name: node_crash
metric: val_accuracy
mode: max
budget: {trials: 6, max_epochs: 12}
scheduler: {type: none}
max_failures: 3
seed: 5
space:
  model: {name: cnn, width: 16}
  optimizer: {name: adam, lr: {loguniform: [1.0e-3, 1.0e-2]}}
"""


def test_worker_node_crash_loses_no_trial(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, NODE_CRASH_SPEC)
    done = subprocess.run(
        [sys.executable, str(TESTS / "scenarios" / "node_crash.py"), str(spec), uri, str(tmp_path / "runs")],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=420,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == 0 and outcome["trials"] == 6
    assert set(outcome["statuses"]) == {"completed"}

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("node_crash")
    parent = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'")[0]
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len({c.data.tags[TRIAL_TAG] for c in children}) == len(children) == 6
    retried = [c for c in children if int(c.data.tags.get("tricksweep.retries", "0")) >= 1]
    assert retried, "no trial was interrupted: the node died too late"
    for child in children:
        assert child.data.tags[STATUS_TAG] == "completed"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, 13)), f"{child.data.tags[TRIAL_TAG]}: {sorted(steps)}"
    # Interrupted trials continued from a checkpoint: none started over at epoch 1.
    assert all(epochs.count(1) == 1 for epochs in outcome["epochs_reported"].values()), outcome["epochs_reported"]
    print(f"node crash: {len(retried)} trials interrupted and retried, 0 lost, killed at {outcome['killed_at_s']} s")

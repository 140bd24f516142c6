"""Driver crash: the sweep's driver is SIGKILLed mid-sweep and `tricksweep resume` completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import write_spec
from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG

TRICKSWEEP = str(Path(sys.executable).with_name("tricksweep"))
SPEC = """\
name: crashy
metric: val_accuracy
mode: max
budget: {trials: 6, max_epochs: 8}
scheduler: {type: none}
seed: 3
space:
  model: {name: cnn, width: 16}
  optimizer: {name: adam, lr: {loguniform: [1.0e-3, 1.0e-2]}}
  dropout: {choice: [0.0, 0.2]}
"""


def finished_children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("crashy")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")
    return [r for r in runs if STATUS_TAG in r.data.tags]


def histories(client: MlflowClient, runs) -> dict[str, list[tuple[int, float]]]:
    return {
        r.data.tags[TRIAL_TAG]: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_accuracy"))
        for r in runs
    }


def test_resume_after_the_driver_is_killed(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, SPEC)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    client = MlflowClient(uri)
    client.search_experiments()  # create the store first: two processes migrating a new sqlite file race
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [TRICKSWEEP, "run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(finished_children(client)) < 2:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, like a lost machine
    driver.wait()
    before = histories(client, finished_children(client))
    assert 2 <= len(before) < 6
    experiment = client.get_experiment_by_name("crashy")
    started = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")
    interrupted = {r.data.tags[TRIAL_TAG] for r in started if STATUS_TAG not in r.data.tags}

    done = subprocess.run(
        [TRICKSWEEP, "resume", "crashy", "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming sweep crashy" in done.stdout

    experiment = client.get_experiment_by_name("crashy")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["tricksweep.resumes"] == "1"
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    trial_ids = [c.data.tags[TRIAL_TAG] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 6, "exactly one child run per trial"
    errors = [c.data.tags.get("tricksweep.error") for c in children if c.data.tags[STATUS_TAG] != "completed"]
    assert {c.data.tags[STATUS_TAG] for c in children} == {"completed"}, errors
    after = histories(client, children)
    for trial, points in after.items():
        assert [step for step, _ in points] == list(range(1, 9)), f"{trial}: gap or duplicate in {points}"
    for trial, points in before.items():
        assert after[trial] == points, f"{trial} lost or changed a finished result"
    # Trials that were mid-run continue under their own child run, marked as resumed. (A trial that
    # finished just before the kill may be continued too, when Tune's last snapshot predates its end.)
    resumed = {c.data.tags[TRIAL_TAG] for c in children if c.data.tags.get("tricksweep.resumed") == "true"}
    assert resumed and resumed <= interrupted | set(before)
    print(f"driver crash: {len(before)} trials finished before the kill, {len(interrupted)} interrupted and "
          f"continued under their child runs, {6 - len(before) - len(interrupted)} not started; 0 lost")


def test_resume_of_an_unknown_sweep_lists_the_sweeps_found(tmp_path: Path, capsys):
    from tricksweep.tracking import SweepRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    SweepRun(uri, "alpha").start("alpha-1", {}, {SWEEP_TAG: "parent"})
    assert main(["resume", "alpah", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "sweep = 'alpah': no sweep of that name" in err and "did you mean 'alpha'" in err and "sweeps found: alpha" in err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "not-an-address"])
def test_unreachable_address_fails_fast_with_one_line(address: str, tmp_path: Path, capsys):
    spec = write_spec(tmp_path, SPEC)
    started = time.monotonic()
    assert main(["run", str(spec), "--address", address, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--address {address}" in err.replace("'", "")
    assert not (tmp_path / "m.db").exists()

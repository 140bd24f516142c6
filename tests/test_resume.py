"""Driver crash: the sweep's driver is SIGKILLed mid-sweep and `tricksweep resume` completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import process_env, write_spec
from mlflow.tracking import MlflowClient

from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, RESUMED_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG

TRICKSWEEP = str(Path(sys.executable).with_name("tricksweep"))
SPEC = """\
name: crashy
metric: val_accuracy
mode: max
budget: {trials: 6, max_epochs: 16}
scheduler: {type: none}
seed: 3
registry: false  # not this test's subject (test_registry.py), ~4 CPU-s at the resume's end
space:
  model: {name: cnn, width: 32}
  optimizer: {name: adam, lr: {loguniform: [1.0e-3, 1.0e-2]}}
  dropout: {choice: [0.0, 0.2]}
"""


def children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("crashy")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")


def finished(runs: list) -> list:
    return [r for r in runs if STATUS_TAG in r.data.tags]


def mid_run(runs: list) -> list:
    """Children with an epoch in MLflow and no end status yet."""
    return [r for r in runs if STATUS_TAG not in r.data.tags and "val_accuracy" in r.data.metrics]


def histories(client: MlflowClient, runs) -> dict[str, list[tuple[int, float]]]:
    return {
        r.data.tags[TRIAL_TAG]: sorted(
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_accuracy")
        )
        for r in runs
    }


# The killed sweep: Optuna, whose restored study loses the trials begun after Tune's last snapshot
# (the harder path; the random searcher redraws them under their ids). Its trials' epochs sleep
# (tests/paced_trainable.py: 16 x 0.4 s a trial), so the kill lands while one runs on any machine,
# at no CPU cost: with a CNN, and a second case for the random searcher, this took ~190 s of the suite.
KILL_SPEC = """\
name: crashy
trainable: paced_trainable
metric: val_accuracy
mode: max
budget: {trials: 6, max_epochs: 16}
scheduler: {type: none}
searcher: optuna_tpe
seed: 3
registry: false  # nothing to register: the trainable has no network
space:
  epoch_s: 0.4
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  dropout: {choice: [0.0, 0.2]}
"""


@pytest.mark.scenario
def test_resume_after_the_driver_is_killed(tmp_path: Path, new_store):
    uri = new_store(tmp_path)
    spec = write_spec(tmp_path, KILL_SPEC)
    env = process_env()  # the driver's local Ray workers inherit it: they import the trainable from here
    client = MlflowClient(uri)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [TRICKSWEEP, "run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    # Kill once two trials have finished and another is part-way, its epochs already in MLflow.
    while len(finished(runs := children(client))) < 2 or not mid_run(runs):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, like a lost machine
    driver.wait()
    started = children(client)
    before = histories(client, finished(started))
    assert 2 <= len(before) < 6
    # (Usually some; none when the writer committed the part-way trial's end between the check and the kill.)
    interrupted = {r.data.tags[TRIAL_TAG] for r in started if STATUS_TAG not in r.data.tags}
    # Tune may have started trials whose runs the driver had not yet created in MLflow.
    trial_dirs = [p.name for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]

    done = subprocess.run(
        [TRICKSWEEP, "resume", "crashy", "--tracking-uri", uri],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming sweep crashy" in done.stdout

    experiment = client.get_experiment_by_name("crashy")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["tricksweep.resumes"] == "1"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "a run is still open after resume"
    # A trial begun after Tune's last snapshot is unknown to the resumed sweep: Optuna draws a new
    # trial, and the old child is marked lost.
    lost = [r for r in runs if r.data.tags.get(STATUS_TAG) == "lost"]
    assert all(r.info.status == "KILLED" and r.data.tags[TRIAL_TAG] not in before for r in lost)
    runs = [r for r in runs if r not in lost]
    trial_ids = [r.data.tags[TRIAL_TAG] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)) == 6, "exactly one child run per trial"
    errors = [r.data.tags.get("tricksweep.error") for r in runs if r.data.tags[STATUS_TAG] != "completed"]
    assert {r.data.tags[STATUS_TAG] for r in runs} == {"completed"}, errors
    after = histories(client, runs)
    for trial, points in after.items():
        assert [step for step, _ in points] == list(range(1, 17)), f"{trial}: gap or duplicate in {points}"
    for trial, points in before.items():
        assert after[trial] == points, f"{trial} lost or changed a finished result"
    # Trials that were mid-run continue under their own child run, marked as resumed. (A trial that
    # finished just before the kill may be continued too, when Tune's last snapshot predates its end.)
    resumed = {r.data.tags[TRIAL_TAG] for r in runs if r.data.tags.get(RESUMED_TAG) == "true"}
    assert resumed
    assert all(any(trial in name for name in trial_dirs) for trial in resumed), "only trials started before the kill"
    print(
        f"driver crash: {len(before)} trials finished before the kill, {len(interrupted)} part-way in MLflow, "
        f"{len(resumed)} continued under their child runs marked resumed, {len(lost)} lost; 0 results lost"
    )


def test_a_restored_tracking_callback_keeps_its_clock_statuses_and_started_trials(tmp_path: Path, new_store):
    from tricksweep.callbacks import MlflowTrials

    def callback() -> MlflowTrials:
        return MlflowTrials(new_store(tmp_path, "unused.db"), "0", "p", max_epochs=3, asha=False, time_limit_s=60)

    first = callback()
    first._started_at -= 40  # 40 s into the sweep when Tune snapshots it
    first._started.add("t_00000")
    first.statuses["t_00000"] = "completed"
    state = first.get_state()

    restored = callback()  # what Tune unpickles from tuner.pkl, taken before the sweep began
    restored.set_state(state)
    restored.setup()
    restored.close()
    assert 39 < time.monotonic() - restored._started_at < 45, "the time budget's clock carries over"
    assert restored.statuses == {"t_00000": "completed"} and restored._started == {"t_00000"}


def test_resume_of_an_unknown_sweep_lists_the_sweeps_found(tracking_uri: str, capsys):
    from tricksweep.tracking import ParentRun

    uri = tracking_uri
    ParentRun(uri, "alpha").start("alpha-1", {}, {SWEEP_TAG: "parent"})
    assert main(["resume", "alpah", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert (
        "sweep = 'alpah': no sweep of that name" in err
        and "did you mean 'alpha'" in err
        and "sweeps found: alpha" in err
    )


@pytest.mark.parametrize("address", ["127.0.0.1:1", "not-an-address"])
def test_unreachable_address_fails_fast_with_one_line(address: str, tmp_path: Path, capsys):
    spec = write_spec(tmp_path, SPEC)
    started = time.monotonic()
    assert main(["run", str(spec), "--address", address, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--address {address}" in err.replace("'", "")
    assert not (tmp_path / "m.db").exists()


def test_settling_children_ends_every_open_run_and_marks_trials_tune_never_saved_lost(tracking_uri: str):
    from tricksweep.tracking import ParentRun

    sweep = ParentRun(tracking_uri, "settle")
    sweep.start("settle-1", {}, {SWEEP_TAG: "parent"})

    def child(trial: str, **tags: str) -> str:
        run = sweep.client.create_run(sweep.experiment_id, tags={PARENT_TAG: sweep.run_id, TRIAL_TAG: trial, **tags})
        return run.info.run_id

    ended = child("t_a", **{STATUS_TAG: "stopped_by_asha"})
    unwritten_end = child("t_b")  # finished in Tune's snapshot; the driver died before MLflow heard
    lost = child("t_c")  # begun after Tune's last snapshot: the resumed sweep never heard of it
    sweep.settle_children({"t_a": "stopped_by_asha", "t_b": "completed"}, started={"t_a", "t_b"})

    def state(run_id: str) -> tuple[str, str | None]:
        run = sweep.client.get_run(run_id)
        return run.info.status, run.data.tags.get(STATUS_TAG)

    assert state(unwritten_end) == ("FINISHED", "completed")
    assert state(lost) == ("KILLED", "lost")
    assert "snapshot" in sweep.client.get_run(lost).data.tags["tricksweep.error"]
    assert state(ended)[1] == "stopped_by_asha"


def test_resume_runs_errored_trials_again_from_their_checkpoints(ray_local, tmp_path: Path, tracking_uri):
    # What `tricksweep resume` offers a trial Tune gave up on (its retries spent, or Ray's reset
    # race on a dying node): it continues from its last checkpoint in the same child run. The
    # subject is the orchestration, so a torch-free trainable (tests/fails_once_trainable.py)
    # with real checkpoints through Tune: each epoch reports the epoch its attempt restored from.
    from fails_once_trainable import ERROR

    from tricksweep.runner import resume_sweep, run_sweep
    from tricksweep.spec import load_spec

    spec = write_spec(
        tmp_path,
        "name: fails_once\ntrainable: fails_once_trainable\nmetric: val_accuracy\nmode: max\n"
        "budget: {trials: 1, max_epochs: 3}\n"
        "scheduler: {type: none}\nsearcher: grid\nmax_failures: 0\n"
        f"space: {{model: {{name: mlp, width: 8}}, dropout: {{grid: [0.0, 0.5]}}, record_to: {tmp_path}}}\n",
    )
    uri = tracking_uri
    first = run_sweep(load_spec(spec), tracking_uri=uri, storage=str(tmp_path / "runs"), echo=lambda _: None)
    client = MlflowClient(uri)
    [errored] = [
        c
        for c in client.search_runs([first.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")
        if c.data.tags[STATUS_TAG] == "failed"
    ]
    assert first.errors == 1 and errored.data.tags["tricksweep.error"].startswith(f"RuntimeError: {ERROR} (at ")
    assert "fails_once_trainable.py:" in errored.data.tags["tricksweep.error"]  # where in the user's code

    second = resume_sweep("fails_once", tracking_uri=uri, echo=lambda _: None)
    assert second.errors == 0 and {r.status for r in second.trials} == {"completed"}
    run = client.get_run(errored.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "completed"
    assert run.data.tags[RESUMED_TAG] == "true" and "tricksweep.error" not in run.data.tags
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]  # epoch 1 from the first attempt, 2 and 3 after the resume
    resumed_from = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "resumed_from"))
    assert resumed_from == [(1, 0), (2, 1), (3, 1)]  # the resume started from epoch 1's checkpoint, not afresh
    copy = Path((tmp_path / "restored_from").read_text())  # where report.restore() put the checkpoint
    assert copy.name.startswith("tricksweep-restore-") and not copy.exists()  # removed as the trial ended
    assert len(client.search_runs([first.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")) == 2

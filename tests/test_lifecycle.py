"""How a sweep ends when it does not simply complete: interrupted (Ctrl-C, SIGTERM), stopped by
repeated trial errors, or failed in the driver. Each leaves no MLflow run RUNNING and ends with a
line that says what happened and what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TESTS, process_env, write_spec
from mlflow.tracking import MlflowClient

from tricksweep.errors import SpecError
from tricksweep.tracking import ERROR_TAG, PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG, ParentRun

TRICKSWEEP = str(Path(sys.executable).with_name("tricksweep"))
# Two trials at a time on any machine (Ray reads the node's resources from this variable), so
# that a sweep of 8 still has trials that never started when the signal lands.
TWO_SLOTS = {"RAY_OVERRIDE_RESOURCES": '{"CPU": 2}'}
# The subject is how a sweep ends, not training: epochs that sleep (tests/paced_trainable.py) keep
# trials running while the signal lands, on any machine and at no CPU cost.
SPEC = """\
name: intr
trainable: paced_trainable
metric: val_accuracy
mode: max
budget: {trials: 8, max_epochs: 12}
scheduler: {type: asha, grace_epochs: 2, reduction_factor: 2}
seed: 1
registry: false  # nothing to register: the trainable has no network
space:
  epoch_s: 0.25
  lr: {loguniform: [1.0e-3, 1.0e-2]}
"""
# What Ray would print about an interrupted sweep that contradicts ours or names the wrong command.
RAY_NOISE = ("Tuner.restore", "Could not fetch metrics", "Failed to fetch metrics", "Stop signal received",
             "Trials did not complete", "Traceback")


def _runs(client: MlflowClient, name: str) -> tuple[object | None, list]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None, []
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "parent"]
    return (parents[0] if parents else None), [r for r in runs if r.data.tags.get(SWEEP_TAG) == "child"]


def _summary_counts(out: str, prefix: str) -> dict[str, int]:
    """``{"completed": 2, "interrupted": 1}`` from the summary line ``<prefix> 0:14: 2 completed, 1 interrupted``."""
    line = next(ln for ln in out.splitlines() if ln.startswith(prefix))
    counts = {}
    for part in line.split(": ", 1)[1].split(", "):
        n, status = part.split(" ", 1)
        counts[status.replace(" ", "_")] = int(n)
    return counts


@pytest.mark.scenario
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_sweep_interrupted_and_resume_finishes_it(sig: str, tmp_path: Path, new_store):
    uri = new_store(tmp_path)  # ./mlflow.db of the commands below: resume finds it there by default
    spec = write_spec(tmp_path, SPEC)
    client = MlflowClient(uri)
    env = process_env(**TWO_SLOTS)
    driver = subprocess.Popen(
        [TRICKSWEEP, "run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    # The driver's own lines, not MLflow (written 2 s later), say when two trials have ended.
    while sum(line.startswith("  trial-") for line in list(lines)) < 2:
        assert driver.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "no two trials finished in time"
        time.sleep(0.1)
    if sig == "SIGINT":
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    else:
        driver.send_signal(signal.SIGTERM)  # `kill PID`, a scheduler's stop: the driver alone
    driver.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)

    assert driver.returncode == 130, out[-3000:]
    # (No --tracking-uri in it: the store is ./mlflow.db, where resume looks by default.)
    assert out.strip().splitlines()[-1] == "interrupted; to finish the sweep: tricksweep resume intr", out[-3000:]
    assert not [noise for noise in RAY_NOISE if noise in out], out[-3000:]
    parent, children = _runs(client, "intr")
    assert parent.info.status == "KILLED" and parent.data.tags[STATUS_TAG] == "interrupted"
    assert not [c for c in children if c.info.status == "RUNNING"], "a child run was left RUNNING"
    # Only trials that ran are counted, and none of them as stopped by ASHA without a rung.
    counts = _summary_counts(out, "interrupted after")
    recorded = [c for c in children if "val_accuracy" in c.data.metrics]
    assert sum(counts.values()) == len(recorded) < 8, (counts, out[-2000:])
    assert all(int(c.data.tags.get("tricksweep.rung", "1")) >= 1 for c in children)
    started = {c.data.tags[TRIAL_TAG] for c in children}

    if sig == "SIGTERM":
        return  # the rest (resume after an interruption) is the same for both signals
    done = subprocess.run([TRICKSWEEP, "resume", "intr"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not [noise for noise in RAY_NOISE if noise in done.stdout + done.stderr], done.stderr[-2000:]
    # The same words as `run` for the same ends: never Tune's "terminated", never a bare "done".
    trial_lines = [ln for ln in done.stdout.splitlines() if ln.startswith("  trial-")]
    assert trial_lines and not [ln for ln in trial_lines if " done " in ln or "terminated" in ln], trial_lines
    progress = [ln for ln in done.stdout.splitlines() if ln.startswith("[")]
    assert not [ln for ln in progress if "terminated" in ln], progress
    parent, children = _runs(client, "intr")
    assert parent.info.status == "FINISHED" and parent.data.tags[STATUS_TAG] == "completed"
    trial_ids = [c.data.tags[TRIAL_TAG] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 8, "one child run per trial, no duplicates"
    assert started <= set(trial_ids)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha"}
    print(f"{sig}: {sum(counts.values())} trials counted at the interrupt ({counts}), "
          f"{len(started)} child runs then; resume finished all 8")


REPEATED_ERRORS_SPEC = """\
name: broken
trainable: broken_trainable
metric: val_accuracy
mode: max
budget: {trials: 12, max_epochs: 3}
scheduler: {type: none}
space:
  model: {name: mlp, width: 8}
  dropout: {choice: [0.0, 0.2]}
"""


@pytest.mark.scenario
def test_the_first_trials_failing_alike_stop_the_sweep_with_one_error_line(tmp_path: Path, new_store):
    from broken_trainable import ERROR

    uri = new_store(tmp_path)
    spec = write_spec(tmp_path, REPEATED_ERRORS_SPEC)
    done = subprocess.run(
        [TRICKSWEEP, "run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, env=process_env(**TWO_SLOTS), capture_output=True, text=True, timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    line = f"FileNotFoundError: {ERROR} (at {TESTS / 'broken_trainable.py'}:10)"
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: sweep broken failed: the first 3 trials all failed with the same error: {line}"
    ), output[-3000:]
    assert output.count(ERROR) == 1, output  # once, not once per trial
    assert "Traceback" not in output and "ray.exceptions" not in output, output[-3000:]

    client = MlflowClient(uri)
    parent, children = _runs(client, "broken")
    assert parent.info.status == "FAILED" and parent.data.tags[STATUS_TAG] == "failed"
    assert parent.data.tags[ERROR_TAG] == f"the first 3 trials all failed with the same error: {line}"
    failed = [c for c in children if c.data.tags[STATUS_TAG] == "failed"]
    assert len(failed) >= 3 and all(c.data.tags[ERROR_TAG] == line and c.info.status == "FAILED" for c in failed)
    assert len(children) <= 3 + 2, "no new trial after the third failure (two run at a time)"
    assert not [c for c in children if c.info.status == "RUNNING"]
    print(f"repeated errors: stopped after {len(children)} of 12 trials, {len(output.splitlines())} lines of output")


def test_stop_on_repeated_errors_is_validated_in_one_line(tmp_path: Path):
    from tricksweep.spec import load_spec

    spec = write_spec(tmp_path, REPEATED_ERRORS_SPEC.replace("trainable: broken_trainable\n", "")
                      + "stop_on_repeated_errors: -1\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == "stop_on_repeated_errors = -1: Input should be greater than or equal to 0"
    off = write_spec(tmp_path, REPEATED_ERRORS_SPEC.replace("trainable: broken_trainable\n", "")
                     + "stop_on_repeated_errors: 0\n", name="off.yaml")
    assert load_spec(off).spec.stop_on_repeated_errors == 0


@pytest.mark.slow
def test_with_the_check_off_every_trial_runs_and_the_error_is_shown_once(ray_local, tmp_path: Path, tracking_uri):
    from broken_trainable import ERROR

    from tricksweep.runner import run_sweep
    from tricksweep.spec import load_spec

    spec = write_spec(tmp_path, REPEATED_ERRORS_SPEC.replace("trials: 12", "trials: 4")
                      + "stop_on_repeated_errors: 0\n")
    lines: list[str] = []
    outcome = run_sweep(load_spec(spec), tracking_uri=tracking_uri, storage=str(tmp_path / "runs"), echo=lines.append)
    assert outcome.status == "failed" and len(outcome.trials) == 4
    assert outcome.error.startswith(f"all 4 trials failed; the last: FileNotFoundError: {ERROR}")
    failures = [ln for ln in lines if " failed: " in ln]
    assert len(failures) == 4 and sum(ERROR in ln for ln in failures) == 1, failures
    assert all("the same error as trial-" in ln for ln in failures if ERROR not in ln)
    parent = MlflowClient(tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags[ERROR_TAG] == outcome.error


@pytest.mark.slow
def test_the_first_trial_without_its_files_stops_the_sweep(ray_local, tmp_path: Path, tracking_uri):
    from unavailable_trainable import ERROR

    from tricksweep.runner import run_sweep
    from tricksweep.spec import load_spec

    spec = write_spec(tmp_path, REPEATED_ERRORS_SPEC.replace("broken_trainable", "unavailable_trainable")
                      + "max_concurrent_trials: 1\n")
    lines: list[str] = []
    outcome = run_sweep(load_spec(spec), tracking_uri=tracking_uri, storage=str(tmp_path / "runs"), echo=lines.append)
    assert outcome.status == "failed"
    assert outcome.error == (f"trial-00000 could not read its files: trainables.data.FilesUnavailable: {ERROR} "
                             "(at tests/unavailable_trainable.py:11)"), outcome.error
    assert sum(ERROR in ln for ln in lines) <= 1, lines  # shown once at most, besides the error at the end
    client = MlflowClient(tracking_uri)
    children = client.search_runs([outcome.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert [c.data.tags[STATUS_TAG] for c in children] == ["failed"], "one trial, not twelve"
    assert client.get_run(outcome.parent_run_id).info.status == "FAILED"


@pytest.mark.parametrize("raised", [RuntimeError("tuner could not be built\nstorage refused"), KeyboardInterrupt()])
def test_a_driver_failure_after_the_parent_run_exists_ends_it(ray_local, tracking_uri: str, raised: BaseException):
    from tricksweep.runner import execute
    from tricksweep.spec import load_spec

    spec = load_spec({"name": "driver_fails", "metric": "val_accuracy", "mode": "max",
                      "budget": {"trials": 1, "max_epochs": 1}, "space": {"model": {"name": "mlp", "width": 8}}}).spec
    parent = ParentRun(tracking_uri, "driver_fails")
    parent.start("driver_fails-1", {}, {SWEEP_TAG: "parent"})

    def make_tuner():
        raise raised

    with pytest.raises(type(raised)):
        execute(make_tuner, spec, parent, None)
    run = parent.client.get_run(parent.run_id)
    if isinstance(raised, KeyboardInterrupt):
        assert run.info.status == "KILLED" and run.data.tags[STATUS_TAG] == "interrupted"
    else:
        assert run.info.status == "FAILED" and run.data.tags[STATUS_TAG] == "failed"
        assert run.data.tags[ERROR_TAG] == "RuntimeError: storage refused"


def test_settling_ends_a_child_whose_end_tag_was_written_but_not_its_end(tracking_uri: str):
    # A driver killed between the writer's end tag and its run end leaves a RUNNING run with a status.
    sweep = ParentRun(tracking_uri, "half_ended")
    sweep.start("half_ended-1", {}, {SWEEP_TAG: "parent"})
    run = sweep.client.create_run(sweep.experiment_id, tags={PARENT_TAG: sweep.run_id, TRIAL_TAG: "t_a",
                                                             STATUS_TAG: "failed"})
    sweep.settle_children({}, started={"t_a"})
    settled = sweep.client.get_run(run.info.run_id)
    assert settled.info.status == "FAILED" and settled.data.tags[STATUS_TAG] == "failed"
    running = sweep.client.create_run(sweep.experiment_id, tags={PARENT_TAG: sweep.run_id, TRIAL_TAG: "t_b"})
    sweep.settle_children({}, started={"t_a", "t_b"})  # running when the sweep was interrupted: no end at all
    settled = sweep.client.get_run(running.info.run_id)
    assert settled.info.status == "KILLED" and settled.data.tags[STATUS_TAG] == "interrupted"


def test_a_result_tune_took_in_as_the_sweep_stopped_is_kept_for_the_record(tmp_path: Path):
    """The last result of a trial interrupted right after reporting can be in Tune's trial (its
    ``metrics``) but not yet in result.json: it is counted, so it is back-filled to MLflow too."""
    import pandas as pd
    from ray.tune import Result

    from tricksweep.runner import result_rows

    last = {"trial_id": "t_00001", "epoch": 2, "val_accuracy": 0.5}
    written = pd.DataFrame([{"trial_id": "t_00001", "epoch": 1, "val_accuracy": 0.25}])
    assert [r["epoch"] for r in result_rows(Result(last, None, None, str(tmp_path), written))] == [1, 2]
    assert result_rows(Result(last, None, None, str(tmp_path), None)) == [last]
    both = pd.DataFrame([{"epoch": 1, "val_accuracy": 0.25}, {"epoch": 2, "val_accuracy": 0.5}])
    assert [r["epoch"] for r in result_rows(Result(last, None, None, str(tmp_path), both))] == [1, 2]
    assert result_rows(Result({"trial_id": "t_00002"}, None, None, str(tmp_path), None)) == []  # never reported

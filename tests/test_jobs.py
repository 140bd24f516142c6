"""Ray Jobs against a real head started with `ray start --head` (dashboard on loopback)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from mlflow.tracking import MlflowClient
from ray_heads import BIN, ray_head

from tricksweep import jobs
from tricksweep.cli import main
from tricksweep.tracking import SWEEP_TAG


@pytest.fixture(scope="module")
def head(short_tmp):
    """A one-node cluster in its own process tree (tests/ray_heads.py), stopped by PID at the end."""
    with ray_head(short_tmp("rayhead"), None, f"{BIN}{os.pathsep}{os.environ['PATH']}") as address:
        yield address


def wait_for(address: str, job_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(jobs.info(job_id, address).status)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(1)
    return status


@pytest.mark.scenario
def test_submit_runs_the_sweep_on_the_cluster_and_records_it(head, tmp_path, capsys, new_store):
    uri = new_store(tmp_path)
    code = main(
        [
            "submit",
            str(ROOT / "sweeps" / "quickstart.yaml"),
            "--address",
            head,
            "--smoke",
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    job_id = capsys.readouterr().out.strip()
    assert wait_for(head, job_id) == "SUCCEEDED", jobs.logs(job_id, head)[-3000:]

    assert main(["status", job_id, "--address", head]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["logs", job_id, "--address", head]) == 0
    out = capsys.readouterr().out
    assert "best val_accuracy" in out and "top 2 of 2 trials" in out
    assert main(["logs", job_id, "--address", head, "--follow"]) == 0  # returns once the job has ended
    assert "best val_accuracy" in capsys.readouterr().out

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags[SWEEP_TAG] for r in runs) == ["child", "child", "parent"]


@pytest.mark.scenario
def test_submit_ships_the_users_code_from_outside_the_checkout(head, tmp_path, new_store):
    # The trainable and its helper module live in a folder the checkout (the job's working dir)
    # does not hold; the spec names it. The job's driver and its trials import the shipped copy.
    from test_shipping import SPEC, user_project

    probe = tmp_path / "probe"
    user_project(tmp_path / "usercode", probe)
    (tmp_path / "proj" / "sweeps").mkdir(parents=True)
    spec = tmp_path / "proj" / "sweeps" / "s.yaml"
    spec.write_text(SPEC.format(probe=probe) + "code: {dir: ../../usercode}\n")
    try:
        job_id = jobs.submit(spec, head, tracking_uri=new_store(tmp_path), storage=str(tmp_path / "runs"))
    finally:
        for name in ("mytrain", "helpers"):
            sys.modules.pop(name, None)
    assert wait_for(head, job_id) == "SUCCEEDED", jobs.logs(job_id, head)[-3000:]
    trials = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    assert len(trials) == 2
    for trial in trials:
        for module in ("train", "helpers"):
            shipped = Path(trial[module]).parent
            assert shipped.name == "usercode" and shipped.parent.name.startswith("_ray_pkg_"), trial[module]


@pytest.mark.scenario
def test_stop_a_running_job(head, tmp_path, capsys, new_store):
    job_id = jobs.submit(
        ROOT / "sweeps" / "tricks_digits.yaml",
        head,
        tracking_uri=new_store(tmp_path),
        storage=str(tmp_path / "runs"),
    )
    deadline = time.monotonic() + 120
    while str(jobs.info(job_id, head).status) == "PENDING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert main(["stop", job_id, "--address", head]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert wait_for(head, job_id, timeout=120) == "STOPPED"


@pytest.mark.scenario
def test_unknown_job_id_is_one_line_with_exit_2(head, capsys):
    assert main(["status", "raysubmit_nope", "--address", head]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "job 'raysubmit_nope': no such job" in err


def test_unreachable_dashboard_fails_fast(capsys):
    started = time.monotonic()
    assert (
        main(["submit", str(ROOT / "sweeps" / "quickstart.yaml"), "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    )
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray dashboard answers there" in err

"""Ray Jobs against a real head started with `ray start --head` (dashboard on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from mlflow.tracking import MlflowClient

from tricksweep import jobs
from tricksweep.cli import main
from tricksweep.tracking import SWEEP_TAG

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(short_tmp):
    """A one-node cluster in its own process tree, stopped by PID at the end."""
    temp = short_tmp("rayhead")
    # Ray binds every port it can pick itself (0), so none can be taken between a pick and the bind:
    # ports picked here by bind(("127.0.0.1", 0)) and bound seconds later went to other processes or
    # were already held on the machine's address, and the head lost its client server, runtime-env
    # agent or raylet after its dashboard had answered: `ray start --block` then stops everything and
    # the tests met RemoteDisconnected / Connection refused. The Ray Client server can't pick its own
    # port; free_port() gives one outside the ephemeral range. The defaults (6379, 8265, 52365, 44217,
    # 44227, workers on 10002-19999) are what another local Ray on this machine holds.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "AUTOSCALER_METRIC_PORT": "0",
        "DASHBOARD_METRIC_PORT": "0",
    }
    log = (temp / "ray-start.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--port=0",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--dashboard-port=0",
            "--dashboard-agent-listen-port=0",
            f"--ray-client-server-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--include-dashboard=true",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        address = _wait_until_ready(proc, temp)
        yield address
        assert proc.poll() is None, f"the head died during the tests: {_head_logs(temp)}"
    finally:
        proc.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def _wait_until_ready(proc: subprocess.Popen, temp: Path, timeout: float = 180) -> str:
    """The dashboard's address, once the head has run a job: dashboard, job manager, dashboard
    agent, runtime-env agent and a worker all up (a dashboard that answers may have no agent yet)."""
    from ray._raylet import GcsClient
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    address = probe = last = None
    while True:
        assert proc.poll() is None, f"ray start --head exited ({proc.returncode}): {_head_logs(temp)}"
        assert time.monotonic() < deadline, f"the head was not ready in {timeout:g} s ({last!r}): {_head_logs(temp)}"
        status = None
        try:
            if address is None and (temp / "ray_current_cluster").exists():  # written once the head runs
                gcs = GcsClient(address=(temp / "ray_current_cluster").read_text().strip())
                url = gcs.internal_kv_get(b"webui:url", b"dashboard")  # the port the dashboard bound
                address = f"http://{url.decode()}" if url else None
            if address is not None:
                client = JobSubmissionClient(address)
                probe = probe or client.submit_job(entrypoint="python -c pass")  # 'No available agent' at first
                status = str(client.get_job_status(probe))
        except Exception as err:  # noqa: BLE001 - not up yet: retried until the deadline
            last = err
        if status in ("FAILED", "STOPPED"):
            raise AssertionError(f"the head's probe job {status}: {client.get_job_logs(probe)[-2000:]}")
        if status == "SUCCEEDED":
            return address
        time.sleep(1)


def _head_logs(temp: Path) -> str:
    """What `ray start` printed and which of its processes exited, for a failure message."""
    text = (temp / "ray-start.log").read_text()[-3000:] if (temp / "ray-start.log").exists() else ""
    exits = "".join(p.read_text()[-2000:] for p in temp.glob("session_*/logs/ray_process_exit.log"))
    return f"{text}\n{exits}".strip() or "(no output)"


def wait_for(address: str, job_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(jobs.info(job_id, address).status)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(1)
    return status


@pytest.mark.scenario
def test_submit_runs_the_sweep_on_the_cluster_and_records_it(head, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
def test_stop_a_running_job(head, tmp_path, capsys):
    job_id = jobs.submit(
        ROOT / "sweeps" / "tricks_digits.yaml",
        head,
        tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
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

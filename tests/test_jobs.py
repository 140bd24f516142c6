"""Ray Jobs against a real head started with `ray start --head` (dashboard on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port
from tricksweep import jobs
from tricksweep.cli import main
from tricksweep.tracking import SWEEP_TAG

BIN = Path(sys.executable).parent



@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node cluster in its own process tree, stopped by PID at the end."""
    temp = tmp_path_factory.mktemp("rayhead")
    port, dashboard = free_port(), free_port()
    # Every port explicit: the session's other local Ray already holds the defaults (52365 for the
    # dashboard agent among them), and a head whose agent cannot bind accepts no jobs.
    agent_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
    )]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=2",
         f"--temp-dir={temp}", "--disable-usage-stats", *agent_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            jobs.connect(address).list_jobs()
            break
        except Exception:
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the dashboard did not come up"
            time.sleep(1)
    yield address
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def wait_for(address: str, job_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(jobs.info(job_id, address).status)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(1)
    return status


def test_submit_runs_the_sweep_on_the_cluster_and_records_it(head, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["submit", str(ROOT / "sweeps" / "quickstart.yaml"), "--address", head, "--smoke",
                 "--tracking-uri", uri, "--storage", str(tmp_path / "runs")])
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


def test_stop_a_running_job(head, tmp_path, capsys):
    job_id = jobs.submit(ROOT / "sweeps" / "tricks_digits.yaml", head, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                         storage=str(tmp_path / "runs"))
    deadline = time.monotonic() + 120
    while str(jobs.info(job_id, head).status) == "PENDING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert main(["stop", job_id, "--address", head]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert wait_for(head, job_id, timeout=120) == "STOPPED"


def test_unknown_job_id_is_one_line_with_exit_2(head, capsys):
    assert main(["status", "raysubmit_nope", "--address", head]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "job 'raysubmit_nope': no such job" in err


def test_unreachable_dashboard_fails_fast(capsys):
    started = time.monotonic()
    assert main(["submit", str(ROOT / "sweeps" / "quickstart.yaml"), "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray dashboard answers there" in err

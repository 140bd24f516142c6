"""Ray Jobs against real heads started as a careful or a careless operator starts them.

- Token authentication on (``RAY_AUTH_MODE=token``, as cluster.yaml starts its nodes): a client
  without the cluster's token is refused with one line, one with it submits a sweep that runs.
- ``ray start`` run with a PATH whose ``python`` is not Ray's (the venv's ``ray`` by its full
  path): ``submit`` says which interpreter lacks what, before handing out a job id.

Clients run as their own processes, as on a laptop: Ray caches the auth mode and token per process.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from ray_heads import BIN, client_env, ray_head


@pytest.fixture(scope="module")
def token_head(short_tmp):
    """(dashboard URL, token file) of a head with token auth on."""
    temp = short_tmp("authhead")
    token = temp / "cluster_token"
    token.write_text(secrets.token_hex(32))
    with ray_head(temp, token, f"{BIN}{os.pathsep}{os.environ['PATH']}") as address:
        yield address, token, (temp / "ray_current_cluster").read_text().strip()


def tricksweep(*args: str, token_path: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tricksweep.cli", *args], env=client_env(token_path), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.scenario
def test_without_the_token_a_submission_is_refused_in_one_line(token_head, tmp_path: Path):
    address, _, _ = token_head
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    for token_path, refusal in ((None, "Missing authentication token"), (wrong, "Invalid authentication token")):
        done = tricksweep("submit", str(ROOT / "sweeps" / "quickstart.yaml"), "--smoke", "--address", address,
                          token_path=token_path, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "token authentication on and refused" in done.stderr and refusal in done.stderr
        assert "RAY_AUTH_TOKEN_PATH" in done.stderr and done.stdout == ""


@pytest.mark.scenario
def test_with_the_token_the_job_runs(token_head, tmp_path: Path):
    # The subject is the token: the job is a user's small project (tests/test_shipping.py), followed as a
    # user follows one (`logs --follow` returns once the job has ended), then asked for its status.
    from test_shipping import user_project

    address, token, _ = token_head
    spec = user_project(tmp_path / "usercode", tmp_path / "probe")
    submitted = tricksweep("submit", str(spec), "--address", address, "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path / "runs"),
                           token_path=token, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()
    followed = tricksweep("logs", job_id, "--address", address, "--follow", token_path=token, cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr[-2000:]
    status = tricksweep("status", job_id, "--address", address, token_path=token, cwd=tmp_path)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, followed.stdout[-3000:]
    assert "best loss" in followed.stdout and len(list((tmp_path / "probe").glob("*.json"))) == 2


@pytest.mark.scenario
def test_a_driver_without_the_token_is_refused_in_one_line(token_head, tmp_path: Path):
    _, _, gcs = token_head
    done = tricksweep("run", str(ROOT / "sweeps" / "quickstart.yaml"), "--smoke", "--address", gcs, token_path=None,
                      cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "token authentication on and refused this driver (RPC error: InvalidAuthToken" in done.stderr
    assert "RAY_AUTH_TOKEN_PATH" in done.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.scenario
def test_a_head_whose_python_lacks_ray_is_named_before_a_job_id(short_tmp, tmp_path: Path):
    system_python = Path("/usr/bin/python3")
    lacks_ray = system_python.exists() and subprocess.run([system_python, "-c", "import ray"],
                                                          capture_output=True).returncode != 0
    if not lacks_ray:
        pytest.skip("needs a system python3 without ray")
    bin_dir = tmp_path / "bin"  # what PATH finds first on a head started as `.venv/bin/ray start --head`
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(system_python)
    temp = short_tmp("barehead")
    with ray_head(temp, None, f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin") as address:
        started = time.monotonic()
        done = tricksweep("submit", str(ROOT / "sweeps" / "quickstart.yaml"), "--smoke", "--address", address,
                          token_path=None, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert f"`python` = {bin_dir / 'python'}, which cannot import ray, " in done.stderr, done.stderr
        assert "PATH=" in done.stderr and done.stdout == ""
        assert time.monotonic() - started < 60

"""A real Ray head for the Jobs tests: `ray start --head` in its own process tree, its dashboard on
loopback, ready once it has run a job, stopped by PID at the end.

Ray binds every port it can pick itself (0), so none can be taken between a pick and the bind: ports
picked by bind(("127.0.0.1", 0)) and bound seconds later went to other processes or were already held on
the machine's address, and the head lost its client server, runtime-env agent or raylet after its
dashboard had answered (`ray start --block` then stops everything: RemoteDisconnected / Connection
refused). The Ray Client server can't pick its own port; free_port() gives one outside the ephemeral
range. The defaults (6379, 8265, 52365, 44217, 44227, workers on 10002-19999) are what another local Ray
on this machine holds. Clients run as their own processes, as on a laptop: Ray caches the auth mode and
token per process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT, free_port

BIN = Path(sys.executable).parent
# A probe job (run with the head's token, if any): the dashboard's URL once the head can run jobs: dashboard,
# job manager, dashboard agent, runtime-env agent and a worker all up (a dashboard that answers may have no agent yet).
READY = """
import sys, time
from ray._raylet import GcsClient
from ray.job_submission import JobSubmissionClient
temp, deadline = sys.argv[1], time.monotonic() + 180
address = probe = last = None
while time.monotonic() < deadline:
    try:
        if address is None:
            url = GcsClient(address=open(temp + "/ray_current_cluster").read().strip()).internal_kv_get(
                b"webui:url", b"dashboard")
            address = f"http://{url.decode()}" if url else None
        if address is not None:
            client = JobSubmissionClient(address)
            probe = probe or client.submit_job(entrypoint="python -c pass")
            if str(client.get_job_status(probe)) == "SUCCEEDED":
                print(address)
                sys.exit(0)
    except Exception as err:
        last = err
    time.sleep(1)
sys.exit(f"not ready: {last!r}")
"""


def client_env(token_path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    if token_path is None:
        env["RAY_AUTH_MODE"] = "disabled"  # explicit: a ~/.ray/auth_token would otherwise turn it on for `ray start`
    else:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    return env


@contextlib.contextmanager
def ray_head(temp: Path, token: Path | None, path: str) -> Iterator[str]:
    """A one-node cluster in its own process tree (`ray start` by its full path, with ``PATH`` =
    ``path``), its dashboard URL once it has run a job; stopped by PID at the end."""
    env = {**client_env(token), "PATH": path, "AUTOSCALER_METRIC_PORT": "0", "DASHBOARD_METRIC_PORT": "0"}
    log = (temp / "ray-start.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port=0", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", "--dashboard-port=0", "--dashboard-agent-listen-port=0",
         f"--ray-client-server-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
         "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        while not (temp / "ray_current_cluster").exists():
            assert proc.poll() is None, f"ray start --head exited ({proc.returncode}): {head_logs(temp)}"
            time.sleep(1)
        ready = subprocess.run([sys.executable, "-c", READY, str(temp)], env=client_env(token), capture_output=True,
                               text=True, timeout=240)
        assert ready.returncode == 0, f"{ready.stderr[-2000:]}\n{head_logs(temp)}"
        yield ready.stdout.strip()
        assert proc.poll() is None, f"the head died during the tests: {head_logs(temp)}"
    finally:
        proc.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()




def head_logs(temp: Path) -> str:
    """What `ray start` printed and which of its processes exited, for a failure message."""
    text = (temp / "ray-start.log").read_text()[-3000:] if (temp / "ray-start.log").exists() else ""
    exits = "".join(p.read_text()[-2000:] for p in temp.glob("session_*/logs/ray_process_exit.log"))
    return f"{text}\n{exits}".strip() or "(no output)"

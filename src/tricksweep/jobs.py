"""Sweeps as Ray Jobs on a cluster: submit, info (status), logs, follow, stop.

    address = "http://127.0.0.1:8265"   # the head's dashboard, via `ray dashboard cluster.yaml`
    job_id = submit("sweeps/cifar10_tricks.yaml", address)
    info(job_id, address).status, logs(job_id, address)

The job ships the project (the sweep file, search_spaces/, trainables/, src/; .gitignore is
respected) as its working directory, the folders of the user's code outside it as py_modules
(``shipping``), and runs ``tricksweep run SPEC --address auto`` on the head. A package over
Ray's upload limit for jobs (100 MiB) fails here, before anything is sent.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tricksweep import shipping
from tricksweep.errors import RAY_TOKEN_FIX, SpecError
from tricksweep.spec import load_spec


def connect(address: str, timeout_s: float = 3.0) -> Any:
    """A JobSubmissionClient for the dashboard at ``address`` (http://HOST:8265), or a one-line SpecError."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if not parsed.hostname:
        raise SpecError(f"--address {address!r}: expected the dashboard URL, e.g. http://127.0.0.1:8265")
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8265), timeout=timeout_s).close()
        return JobSubmissionClient(url)
    except AuthenticationError as err:
        refused = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"--address {address}: the cluster has Ray token authentication on and refused this request "
                        f"({refused}); {RAY_TOKEN_FIX}") from None
    except Exception as err:  # noqa: BLE001 - refused, timeout, not a Ray dashboard: all the same to the user
        reason = (getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
                  if str(err).strip() else type(err).__name__)
        raise SpecError(f"--address {address}: no Ray dashboard answers there ({reason}); "
                        f"on a cluster, forward it first with `ray dashboard cluster.yaml`") from None


def project_root(spec_path: Path) -> Path:
    """The folder holding sweeps/ (the spec's parent's parent), shipped as the job's working dir."""
    spec_path = spec_path.resolve()
    return spec_path.parent.parent if spec_path.parent.name == "sweeps" else spec_path.parent


def submit(
    spec_path: str | Path,
    address: str,
    *,
    smoke: bool = False,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> str:
    spec_path = Path(spec_path)
    loaded = load_spec(spec_path)  # bad specs fail here, not minutes later on the cluster
    root = project_root(spec_path)
    # The user's code folders that the checkout does not carry as the working dir (root itself is
    # on the workers' PYTHONPATH); each package is checked against Ray's limit before connecting.
    code = [f for f in shipping.code_folders(loaded.code_paths, loaded.spec.code.dir) if f != root]
    excludes = shipping.excludes_for(loaded.spec.code.exclude)
    for folder in [root, *code]:
        shipping.check_size(folder, excludes, shipping.job_upload_limit(), "tricksweep submit")
    client = connect(address)
    command = ["python", "-m", "tricksweep.cli", "run", str(spec_path.resolve().relative_to(root)), "--address", "auto"]
    if smoke:
        command.append("--smoke")
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if storage:
        command += ["--storage", storage]
    package_dir = Path(__file__).resolve().parent
    runtime_env = {
        "working_dir": str(root),
        "excludes": excludes,
        # The engine and the trainables of this checkout, and the user's code: importable by the
        # driver and every worker.
        "py_modules": [str(package_dir), str(package_dir.parent.parent / "trainables"), *map(str, code)],
        "env_vars": {"RAY_AIR_NEW_OUTPUT": "0", **shipping.shipped_env(code)},
    }
    check_entrypoint_python(client, address)
    return _submit_job(client, address, entrypoint=shlex.join(command), runtime_env=runtime_env)


def _submit_job(client: Any, address: str, **job: Any) -> str:
    """``client.submit_job(**job)``; a head that has just started may not have its job agent up
    yet: wait for it a little."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise SpecError(f"submit to {address}: {str(err).strip().splitlines()[-1]}") from None
            time.sleep(2)


# What the job's driver imports first; find_spec looks them up without importing them (seconds saved).
DRIVER_MODULES = ("ray", "mlflow", "torch", "torchvision", "pydantic", "yaml", "optuna")
_PROBE = (
    "import importlib.util, sys; "
    "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]; "
    "print('tricksweep-probe', sys.executable, *missing); sys.exit(3 if missing else 0)"
)


def check_entrypoint_python(client: Any, address: str, timeout_s: float = 120) -> None:
    """The head runs a job's entrypoint with the first ``python`` on the PATH ``ray start`` had,
    which need not be Ray's own (``.venv/bin/ray start`` with the venv not on PATH). A tiny job
    asks that ``python`` for the driver's modules, so a head that cannot run the sweep says so,
    in one line, before a job id is handed out."""
    probe = _submit_job(client, address, entrypoint=shlex.join(["python", "-c", _PROBE, *DRIVER_MODULES]))
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(probe))) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            return  # a busy head: the job itself will tell
        time.sleep(0.5)
    if status == "SUCCEEDED":
        return
    output = client.get_job_logs(probe)
    answer = next((line.split()[1:] for line in output.splitlines() if line.startswith("tricksweep-probe ")), None)
    fix = ("start Ray on the head with its environment first on PATH (PATH=~/venv/bin:$PATH ray start ...), "
           "or install tricksweep's dependencies for that python")
    if answer:
        python, *missing = answer
        raise SpecError(f"submit to {address}: the head runs jobs with `python` = {python}, which cannot import "
                        f"{', '.join(missing)}; {fix}")
    last = (output.strip().splitlines() or [status])[-1]
    raise SpecError(f"submit to {address}: the head cannot run a job's `python` ({last.strip()}); {fix}")


def info(job_id: str, address: str) -> Any:
    return _call(job_id, address, "get_job_info")


def logs(job_id: str, address: str) -> str:
    return _call(job_id, address, "get_job_logs")


def follow(job_id: str, address: str, write: Any) -> None:
    """Stream the job's logs until it ends."""
    info(job_id, address)  # unknown ids fail with one line before streaming starts
    client = connect(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def stop(job_id: str, address: str) -> bool:
    return _call(job_id, address, "stop_job")


def _call(job_id: str, address: str, method: str) -> Any:
    """``client.<method>(job_id)``, with an unknown id turned into a one-line SpecError."""
    client = connect(address)
    try:
        return getattr(client, method)(job_id)
    except RuntimeError as err:
        raise _unknown_job(client, job_id, address, err) from None


def _unknown_job(client: Any, job_id: str, address: str, err: Exception) -> SpecError:
    if "does not exist" not in str(err) and "404" not in str(err):
        return SpecError(f"job {job_id!r} at {address}: {str(err).strip().splitlines()[0]}")
    recent = [j.submission_id for j in client.list_jobs() if j.submission_id][-5:]
    known = f"; recent jobs: {', '.join(recent)}" if recent else "; no jobs submitted there yet"
    return SpecError(f"job {job_id!r}: no such job at {address}{known}")

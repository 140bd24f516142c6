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
from tricksweep.errors import SpecError
from tricksweep.spec import load_spec


def connect(address: str, timeout_s: float = 3.0) -> Any:
    """A JobSubmissionClient for the dashboard at ``address`` (http://HOST:8265), or a one-line SpecError."""
    from ray.job_submission import JobSubmissionClient

    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if not parsed.hostname:
        raise SpecError(f"--address {address!r}: expected the dashboard URL, e.g. http://127.0.0.1:8265")
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8265), timeout=timeout_s).close()
        return JobSubmissionClient(url)
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
    # A head that has just started may not have its job agent up yet: wait for it a little.
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise SpecError(f"submit to {address}: {str(err).strip().splitlines()[-1]}") from None
            time.sleep(2)


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

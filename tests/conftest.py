"""Shared fixtures: one real local Ray for the session, MLflow stores in temporary folders."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# Set before Ray starts: a stale ~/.ray/auth_token would otherwise turn token auth on.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Every `mlflow server` a test starts (and the benchmarks' subprocess) inherits this: MLflow 3's
# server otherwise starts 7 huey job-runner processes for its own async jobs, which tracking never
# uses; each imports MLflow, about 8 CPU-s per server start, taken from the sweep on 2 CPUs.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
sys.path.insert(0, str(TESTS))


# With `--dist loadfile` each worker takes whole files in this order (the Makefile turns off xdist's own
# reordering, most tests first, which put these few-test files last: one worker finished the longest alone
# while the others idled). A worker takes the next file as it finishes one. The benchmark smoke, the longest
# file by far, goes first; then the files whose trials sleep or wait on other processes (lifecycle, Jobs,
# resume, faults, outage, GPU memory) alternate with those that compute, so that the three workers the
# Makefile starts on 2 CPUs seldom wait all at once; the smallest files come last and even out the end.
FILE_ORDER = ("test_benchmarks.py", "test_lifecycle.py", "test_registry.py", "test_jobs_heads.py", "test_jobs.py",
              "test_sweeps.py", "test_resume.py", "test_mlflow_ui.py", "test_shipping.py", "test_faults.py",
              "test_own_trainable.py", "test_tracking_outage.py", "test_transfer.py", "test_trainables.py",
              "test_gpu_memory.py", "test_own_data.py", "test_resources.py", "test_search.py",
              "test_integration.py", "test_models.py", "test_init.py", "test_extend.py", "test_rerun.py",
              "test_cli.py", "test_checkpoint_policy.py", "test_layout.py", "test_report.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FILE_ORDER)))


def tests_on_pythonpath() -> str:
    """PYTHONPATH with this folder first, before the caller's rather than instead of it (that path
    may hold the engine under test): Ray workers then import the test-only trainables by name."""
    return os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a driver or cluster a test starts as a process of its own: a local Ray
    without token auth, whose workers import the test-only trainables; ``extra`` on top."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": tests_on_pythonpath(), **extra}


@pytest.fixture(scope="session")
def ray_local():
    """A private 1-CPU Ray for the whole session; workers can import the test-only trainables.

    One CPU, so a sweep runs its trials one at a time in one reused worker: each worker a sweep
    starts costs about 5 CPU-s of imports (torch, torch._dynamo, ray.tune), and with two pytest
    processes on 2 CPUs the suite is CPU-bound (fast lane: 529 -> 374 busy CPU-s, 4:31 -> 3:19).
    Tests whose subject is trials running at once ask for fractional CPUs (test_integration,
    test_resources); multi-node ones build their own clusters."""
    import ray

    ray.init(
        address="local",
        num_cpus=1,
        resources={"accel": 1.0},  # a stand-in GPU: fractional packing is tested on it
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_on_pythonpath()}},
        # It idles beside the suite for minutes, three times over: no prestarted worker (Tune's actors
        # carry a runtime_env and never take one; it costs 1 CPU-s to start and 0.6-0.7 CPU-s a minute idle)
        # and no metrics export (nothing scrapes it): its processes idled at 2.1 instead of 2.7 CPU-s a minute.
        _system_config={"prestart_worker_first_driver": False, "enable_metrics_collection": False},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def short_tmp():
    """``short_tmp(name)``: a new folder with a short path, for a Ray head's ``--temp-dir``. Ray puts
    AF_UNIX sockets under it (``<dir>/session_<date>_<pid>/sockets/plasma_store``), whose paths may not
    exceed 107 bytes; pytest's own folders (``.../pytest-N/popen-gw0/name0`` under xdist) leave too little."""
    import tempfile

    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"ts-{name}-", dir="/tmp")))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """``new_store(folder)``: the URI of a new, empty MLflow sqlite store at folder/mlflow.db.

    Each is a copy of one store MLflow created and migrated at the start of the session: MLflow
    takes about 1.5 s of migrations to create one, a copy opens in 0.05 s. Tests of creating a
    store (the engine's creation lock, the CLI's default ./mlflow.db) let MLflow create their own.
    """
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("store-template")
    template = folder / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(folder)  # MLflow's Default experiment keeps its artifacts under the cwd: not the user's
    try:
        MlflowClient(f"sqlite:///{template}").search_experiments()
    finally:
        os.chdir(cwd)

    def make(folder: Path, name: str = "mlflow.db") -> str:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture
def tracking_uri(tmp_path: Path, new_store) -> str:
    return new_store(tmp_path)


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder as the current one: sweeps/ and search_spaces/ side by side, no tracking URI or
    debug flag from the environment (errors show as a user sees them)."""
    (tmp_path / "sweeps").mkdir()
    shutil.copytree(ROOT / "search_spaces", tmp_path / "search_spaces")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRICKSWEEP_DEBUG", raising=False)
    return tmp_path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, as a user does, so defaults (./mlflow.db, ./runs) land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def one_thread():
    """One torch thread: CPU training is then bit-for-bit deterministic (the resume tests rely on it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_HANDED_OUT: set[int] = set()
_PICK = random.SystemRandom()  # not the `random` module's generator, which a test may seed


def free_port() -> int:
    """A port nobody listens on, for a server a test starts (and binds moments later).

    Not the kernel's bind(("127.0.0.1", 0)) pick: that port lies in the ephemeral range, where any
    process's next bind(0) may take it before our server binds it, and it is free on loopback only,
    while Ray's servers bind the machine's own address too (a port held there came back from such a
    pick 152 times in 2000 with 1000 held). This one lies between Ray's worker ports (10002-19999)
    and the ephemeral range, where only an explicit bind lands; it is free on every address, and no
    two calls in a session return the same port (9 kernel picks in a row repeat one 1 time in 400).
    Under pytest-xdist each worker is a session of its own: it picks in its own slice of the span,
    so no two workers hand out the same port either.
    """
    low, high = _ephemeral_range()
    span = range(20000, low) if low > 21000 else range(high + 1, 65536) if high < 64000 else range(20000, 65536)
    span = _worker_slice(span)
    for _ in range(200):
        port = _PICK.choice(span)
        if port not in _HANDED_OUT and _unbound(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {span.start}-{span.stop - 1} after 200 tries")


def _worker_slice(span: range) -> range:
    """This xdist worker's share of ``span`` (all of it without xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return span
    size = len(span) // count
    start = span.start + int(worker[2:]) * size
    return range(start, start + size)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # the IANA dynamic range, as macOS uses


def _unbound(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue  # no IPv6 here
            return False
    return True


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def unregistered(spec: object):
    """``load_spec(spec)`` with ``registry: false``, for a sweep whose subject is not the model registry
    (tests/test_registry.py has its own). Registering a classifier sweep's best model costs about 4 CPU-s
    (torch._dynamo's import for the pt2 export, MLflow's requirements inference) in the driver."""
    from tricksweep.spec import load_spec

    loaded = load_spec(spec)
    loaded.spec.registry = None
    return loaded

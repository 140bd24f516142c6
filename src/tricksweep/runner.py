"""The driver: a sweep as a pipeline, resolve -> plan -> run -> record (the report comes after,
from MLflow alone: ``report.build_report``).

    outcome = run_sweep("sweeps/quickstart.yaml")       # or a dict of the spec's keys, or load_spec(...)
    outcome.best.name, outcome.best_value, outcome.best_config   # 'trial-00000', 0.9916, {'optimizer': {...}, ...}

- **resolve**: the spec as it will run (smoke mode, ``init.source`` files, absolute paths);
- **plan**: the Tuner with the trial function (``trial.run_trial``), searcher, ASHA and callbacks;
- **run**: Ray up, ``Tuner.fit``; Ctrl-C or SIGTERM stops it as Tune's own Ctrl-C does (trials
  left to ``tricksweep resume``), a run of identical trial errors stops it early;
- **record**: the leaderboard, the best checkpoint and the end status on the parent run:
  ``completed``, ``failed`` or ``interrupted``. Whatever fails on the way, no run is left RUNNING.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from tricksweep import leaderboard, preflight, registry, search, shipping
from tricksweep import space as dsl
from tricksweep.callbacks import MlflowTrials, Progress, RepeatedErrors
from tricksweep.errors import RAY_TOKEN_FIX, SpecError
from tricksweep.gpu import RESOURCE as GPU_MEMORY
from tricksweep.gpu import DeviceLayout, local_gpu_memory_mib
from tricksweep.leaderboard import ConfigRow
from tricksweep.records import TrialRecord
from tricksweep.searchers import pending_trials_limit
from tricksweep.sources import resolve_sources, shipped_files
from tricksweep.spec import Asha, LoadedSpec, SweepSpec, load_spec
from tricksweep.tracking import (
    CODE_PATHS_TAG,
    ERROR_TAG,
    ParentRun,
    end_status,
    metric_points,
    resolve_tracking_uri,
    start_parent,
    trial_name,
)
from tricksweep.trial import CheckpointPolicy, TrialContext, run_trial


@dataclass
class Outcome:
    """What ``run_sweep`` and ``resume_sweep`` return: the leaderboard and where it is recorded."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    ui_url: str
    experiment_path: str  # Tune's experiment folder
    leaderboard: list[ConfigRow]
    trials: list[TrialRecord]
    wall_s: float
    errors: int  # trials that ended in an error
    metric: str
    mode: str
    best_config: dict[str, Any] | None = None  # the best trial's sampled config, nested as in the space
    status: str = "completed"  # how the sweep ended: completed, failed or interrupted (its parent run's tag)
    error: str | None = None  # why it failed, one line (the parent run's tricksweep.error)
    experiment: str = ""  # the MLflow experiment: what `tricksweep resume` takes

    @property
    def best(self) -> TrialRecord | None:
        """The best trial of the best configuration."""
        return self.leaderboard[0].best_trial if self.leaderboard else None

    @property
    def best_value(self) -> float | None:
        return self.leaderboard[0].best_value if self.leaderboard else None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"


# -- resolve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A spec as it will run: smoke mode applied, weights sources local, every path absolute."""

    loaded: LoadedSpec
    tracking_uri: str
    storage_path: str  # Tune's storage root; the experiment folder is <storage_path>/<run_name>
    run_name: str
    smoke: bool

    @property
    def spec(self) -> SweepSpec:
        return self.loaded.spec


def resolve(loaded: LoadedSpec, *, smoke: bool, tracking_uri: str | None, storage: str | None,
            echo: Callable[[str], None]) -> Resolved:
    if smoke:
        loaded = loaded.smoke()
    uri = resolve_tracking_uri(tracking_uri, loaded.spec.tracking.uri)
    storage_path = _storage_path(storage or loaded.spec.storage)
    preflight.check(loaded, tracking_uri=uri, storage_path=storage_path)  # one line and exit 2, before Ray/MLflow
    loaded = resolve_sources(loaded, uri, echo)  # init.source {sweep: ...} / {mlflow: ...} -> local files
    run_name = f"{loaded.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Resolved(loaded, uri, storage_path, run_name, smoke)


def _storage_path(value: str | None) -> str:
    if value and "://" in value:
        return value  # s3://, gs://: shared storage for a cluster
    return str(Path(value or "runs").expanduser().resolve())


# -- plan --------------------------------------------------------------------------------------


def fixed_inputs(spec: SweepSpec) -> dict[str, Any]:
    """What every trial shares (``TrialInfo`` but the seed and device): dataset, epoch budget, checkpoint cadence
    (trainables offer one every epoch; ``checkpoint_policy`` picks the ones kept)."""
    return {"data": spec.dataset, "epochs": spec.budget.max_epochs, "checkpoint_every": 1}


def checkpoint_policy(spec: SweepSpec) -> CheckpointPolicy:
    c = spec.checkpoint
    return CheckpointPolicy(spec.metric, spec.mode, spec.budget.max_epochs, c.every_s, c.every_epochs)


def trial_trainable(loaded: LoadedSpec, layout: DeviceLayout | None = None) -> Any:
    """``run_trial`` with the trainable's import string and folders, the spec's fixed inputs, the
    weights files its space names, and per-trial resources attached (with ``resources.gpu_memory``:
    the share every trial starts with on the cluster's ``layout``, before ``MemoryShares`` sizes it)."""
    spec, trainable = loaded.spec, loaded.trainable
    ctx = TrialContext(
        module=trainable.module,
        function=trainable.function,
        code_paths=loaded.code_paths,
        metric=None if trainable.metrics is not None else spec.metric,  # declared ones were checked by load_spec
        cpus=spec.resources.cpu,
        gpus=spec.resources.gpu,
        gpu_memory=spec.resources.gpu_memory is not None,
        sources=shipped_files(loaded.space),
        checkpoints=checkpoint_policy(spec),
        **fixed_inputs(spec),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **spec.resources.custom}
    if spec.resources.gpu_memory is not None:
        layout = layout or gpu_layout(spec)
        start_mib = spec.resources.gpu_memory_mib or layout.device_mib  # auto: a whole device until measured
        resources = layout.share(start_mib, cpus=spec.resources.cpu, custom=spec.resources.custom)
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


def gpu_layout(spec: SweepSpec) -> DeviceLayout:
    """The GPUs the running cluster advertises, checked against ``resources.gpu_memory`` (one line
    when no node advertises GPU memory, or the request exceeds the smallest GPU)."""
    layout = DeviceLayout.from_cluster()
    field = f"resources.gpu_memory = {spec.resources.gpu_memory!r}"
    if layout is None:
        raise SpecError(f"{field}: no node of the Ray cluster advertises `{GPU_MEMORY}` (local Ray does when "
                        f"it sees a GPU; on a cluster, `ray start --resources` as in cluster.yaml)")
    if spec.max_failures < 0:
        raise SpecError(f"max_failures = {spec.max_failures}: with resources.gpu_memory a trial out of memory on a "
                        "whole GPU would be retried forever; give a number of retries (OOM retries are not counted)")
    request = spec.resources.gpu_memory_mib
    if request is not None and request > layout.device_mib:
        raise SpecError(f"{field}: {request} MiB, but must be `gpu_memory <= {layout.device_mib}MiB`, the "
                        f"memory of the cluster's smallest GPU")
    return layout


def callbacks(spec: SweepSpec, parent: ParentRun, echo: Callable[[str], None]) -> list[tune.Callback]:
    """The MLflow child runs, the stop on repeated errors and the console progress (in that
    order: each reads what the ones before it recorded of a trial's end)."""
    oom_policy = spec.resources.gpu_memory is not None
    tracker = MlflowTrials(
        parent.uri, parent.experiment_id, parent.run_id,
        max_epochs=spec.budget.max_epochs, asha=isinstance(spec.scheduler, Asha), time_limit_s=spec.budget.time_limit_s,
        oom_policy=oom_policy,
    )
    errors = RepeatedErrors(spec.stop_on_repeated_errors, oom_policy=oom_policy)
    return [tracker, errors, Progress(spec.metric, spec.mode, tracker, errors, echo)]


def build_tuner(loaded: LoadedSpec, storage_path: str, run_name: str, callbacks: list,
                history: Any = None) -> tune.Tuner:
    """The Tuner for a validated spec (Ray must be running: weights files go to its object store);
    ``history``: what an extended sweep's lineage ran (``searchers.History``), for its searcher."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    spec = loaded.spec
    scheduler = None
    if isinstance(spec.scheduler, Asha):
        scheduler = ASHAScheduler(
            time_attr="epoch",  # the trainable's epoch is the clock, not Tune's report count
            max_t=spec.budget.max_epochs,
            grace_period=spec.scheduler.grace_epochs,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    search_alg, num_samples, param_space = search.build(loaded.space, spec, history)
    layout = None
    if spec.resources.gpu_memory is not None:
        from ray.tune.schedulers import FIFOScheduler

        from tricksweep.gpu_shares import MemoryShares

        layout = gpu_layout(spec)
        scheduler = MemoryShares(
            scheduler or FIFOScheduler(), layout, request_mib=spec.resources.gpu_memory_mib,
            cpus=spec.resources.cpu, custom=spec.resources.custom, max_failures=spec.max_failures,
        )
        scheduler.infeasible_listener = getattr(search_alg, "mark_infeasible", None)
    return tune.Tuner(
        trial_trainable(loaded, layout),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            # A variant generator caps itself (searchers._variants); Tune would only warn it ignores this.
            max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else spec.max_concurrent_trials,
            time_budget_s=spec.budget.time_limit_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            # Tune's result files, which the record reads back (trial_history); its TensorBoard
            # logger is left out while fitting (without_tensorboard).
            callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
            stop=next((c.stopper() for c in callbacks if isinstance(c, RepeatedErrors)), None),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                # Every checkpoint is kept: with num_to_keep, Tune deletes older ones while its saved
                # experiment state may still point at them, and a driver killed in between leaves
                # trials that cannot resume. Scoring ranks them so the best one is found.
                checkpoint_score_attribute=spec.metric, checkpoint_score_order=spec.mode
            ),
        ),
    )


def restore_tuner(path: str, loaded: LoadedSpec, echo: Callable[[str], None]) -> tune.Tuner:
    """Tune's experiment at ``path`` restored; its callbacks write to the same runs again."""
    tuner = tune.Tuner.restore(
        path, trainable=trial_trainable(loaded), resume_unfinished=True, resume_errored=True
    )
    for callback in _callbacks(tuner):
        if isinstance(callback, Progress):
            callback.echo = echo  # not pickled: the console belongs to this process
        if isinstance(callback, MlflowTrials):
            callback.resumed = True
    return tuner


def _callbacks(tuner: tune.Tuner) -> list:
    # Tuner has no public accessor for its run config; after Tuner.restore this is the only way
    # to reach the callbacks it unpickled.
    return list(tuner._local_tuner.get_run_config().callbacks or [])


# -- run ---------------------------------------------------------------------------------------


def check_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in seconds, with one line, when ``--address`` names no reachable Ray cluster
    (``ray.init`` would otherwise keep retrying for a minute or more)."""
    import socket

    if address in (None, "local"):
        return
    if address == "auto":
        from ray._private.services import find_gcs_addresses

        if not os.environ.get("RAY_ADDRESS") and not find_gcs_addresses():
            raise SpecError("--address auto: no Ray cluster runs on this machine; start one with `ray start --head`")
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"--address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by default) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise SpecError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}) "
                        f"within {timeout_s:g} s") from None
    if address.startswith("ray://"):
        return  # Ray Client speaks its own protocol; the port answering is all we can check cheaply
    # Something answers; one GCS handshake tells whether it is Ray (ray.init would retry for a minute).
    from ray._raylet import GcsClient

    saved_stderr = os.dup(2)  # Ray's C++ client logs its failed handshake straight to fd 2
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        GcsClient(address=target).cluster_id  # noqa: B018 - the call is the check
    except Exception as err:  # noqa: BLE001 - any failure means no usable GCS there
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "InvalidAuthToken" in reason:
            refused = reason.split(". ")[0]
            raise SpecError(f"--address {address}: the cluster has Ray token authentication on and refused this "
                            f"driver ({refused}); {RAY_TOKEN_FIX}") from None
        raise SpecError(f"--address {address}: not a Ray cluster's GCS port ({reason})") from None
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)


def code_runtime_env(loaded: LoadedSpec, address: str | None) -> dict[str, Any] | None:
    """The runtime env that ships the user's code folders to a cluster's nodes, once each passed
    the size check (a one-line SpecError otherwise). None on local Ray, whose workers find the
    folders where they are, and in a Ray Job, whose runtime env (``submit``'s) carries them."""
    if address in (None, "local") or shipping.in_ray_job():
        return None
    folders = shipping.code_folders(loaded.code_paths, loaded.spec.code.dir)
    if not folders:
        return None
    excludes = shipping.excludes_for(loaded.spec.code.exclude)
    for folder in folders:
        shipping.check_size(folder, excludes, shipping.driver_upload_limit(), f"--address {address}")
    return shipping.runtime_env(folders, excludes)


def ensure_ray(address: str | None, cpus: int | None = None, runtime_env: dict[str, Any] | None = None) -> bool:
    """Start (or attach to) Ray unless it already runs in this process; True if we started it.

    Its workers import nothing ahead of a trial. Prestarted workers that imported torch while the
    driver set up MLflow (``preload_python_modules``) were tried, and measured on 2 CPUs they lost:
    a worker still importing when Tune asks for the actor loses to a new process, and then idles with
    torch loaded (the quickstart: 34/47/56 s and 64/91/104 CPU-s against 37/36/43 s and 66/66/78
    CPU-s without; a torch-free trainable: 24 s and 36 CPU-s against 18 s and 18 CPU-s)."""
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "local"):
        # A private in-process cluster: token auth protects nothing here and breaks on a stale token.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # What Tune's actors set themselves; its workers inherit it here (prestarted_actors).
        os.environ.setdefault("PL_DISABLE_FORK", "1")
    local = address in (None, "local")
    gpu_memory = local_gpu_memory_mib() if local else 0
    ray.init(
        address=address or "local",
        num_cpus=cpus if local else None,
        # Local Ray advertises its GPUs' memory as a cluster's nodes do at `ray start` (gpu.py).
        resources={GPU_MEMORY: gpu_memory} if gpu_memory else None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env=runtime_env,
    )
    return True


@contextlib.contextmanager
def without_tensorboard(callbacks: list) -> Iterator[None]:
    """Tune adds its JSON, CSV and TensorBoard loggers to every fit unless told to add none. The
    TensorBoard one imports tensorboardX, hence torch, into the driver (2.7 CPU-s per ``tricksweep
    run``) and writes an event file per trial nothing reads: the record is MLflow. ``build_tuner``
    passes the JSON and CSV loggers itself; while fitting, Tune adds no others. A sweep saved without
    them (by an older tricksweep, then resumed) keeps Tune's defaults."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    if not (any(isinstance(c, JsonLoggerCallback) for c in callbacks)
            and any(isinstance(c, CSVLoggerCallback) for c in callbacks)):
        yield
        return
    with env_set("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"):
        yield


@contextlib.contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block, then as it was (unset if it was unset)."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def prestarted_actors(owns_local_ray: bool) -> Iterator[None]:
    """Tune's trial actors in the workers a local Ray prestarted (``ensure_ray``), not in new ones.

    Tune gives every trial actor class a runtime_env (``PL_DISABLE_FORK=1`` and a few variables it
    copies from the driver: ``ray/tune/execution/class_cache.py``), and Ray places an actor with a
    runtime_env only in a worker started for that runtime_env, never in a prestarted one. In a Ray
    this process started, workers inherit the driver's environment, those variables included, so
    while the sweep is fitted the actor classes go without one. Elsewhere (a cluster, a Ray someone
    else started) Tune's own behaviour is left as it is."""
    if not owns_local_ray:
        yield
        return
    import ray
    from ray.tune.execution import class_cache

    tunes_get = class_cache._ActorClassCache.get

    def get(cache: Any, trainable_cls: Any) -> Any:
        if trainable_cls not in cache._cache:
            cache._cache[trainable_cls] = ray.remote(trainable_cls)
        return cache._cache[trainable_cls]

    class_cache._ActorClassCache.get = get
    try:
        yield
    finally:
        class_cache._ActorClassCache.get = tunes_get


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while a sweep runs.

    Inside ``fitting()`` the first signal asks Tune to stop as its own Ctrl-C handler would (one
    last snapshot of the experiment, unfinished trials left for ``tricksweep resume``) and is
    remembered in ``received``, so the sweep ends as interrupted, not as finished. A second
    signal, or one outside ``fitting()``, raises KeyboardInterrupt at once. Signals reach only
    the main thread; from any other, nothing is installed (and Tune installs nothing either).
    """

    def __init__(self) -> None:
        self.received: str | None = None  # SIGINT or SIGTERM
        self._saved: dict[int, Any] = {}
        self._fitting = False
        self._before_fit: Any = None  # SIGUSR1's handler before fit: not yet Tune's

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def install(self) -> None:
        """Put the handlers (back) in place; the ones found first are restored on exit."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, self._handle)
                self._saved.setdefault(sig, previous)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Around ``Tuner.fit``: Tune leaves SIGINT to us, and we reach its stop through the
        handler it installs for SIGUSR1 (the same one its Ctrl-C handler is)."""
        with env_set("TUNE_DISABLE_SIGINT_HANDLER", "1"):
            self._before_fit = _sigusr1_handler()
            self._fitting = True
            try:
                yield
            finally:
                self._fitting = False

    def _handle(self, signum: int, frame: Any) -> None:
        tune_stop = _sigusr1_handler()
        # Tune's handler is in place once fit has set up; until then SIGUSR1's is the one from before.
        tune_ready = self._fitting and callable(tune_stop) and tune_stop is not self._before_fit
        if self.received is not None or not tune_ready:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        tune_stop(signum, frame)


def _sigusr1_handler() -> Any:
    return signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None


def execute(make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, parent: ParentRun,
            address: str | None, runtime_env: dict[str, Any] | None = None, owns_ray: bool = False,
            ) -> tuple[Any, MlflowTrials, RepeatedErrors | None, str | None]:
    """Ray up (with ``runtime_env``: the user's code shipped to a cluster) unless the caller
    started it (``owns_ray``: then this shuts it down too), the Tuner made and fitted; Tune's
    results, the tracker (drained), the repeated-error check and the signal that interrupted the
    sweep, if one did. Whatever fails on the way, the parent run and the child runs are not left
    RUNNING."""
    _quiet_tune()
    tracker = None
    signals = StopSignals()
    try:
        with signals:
            owns_ray = ensure_ray(address, runtime_env=runtime_env) or owns_ray
            signals.install()  # ray.init put its own SIGTERM handler in place (it prints a stack and aborts)
            tuner = make_tuner()
            tracker = next(c for c in _callbacks(tuner) if isinstance(c, MlflowTrials))
            local = owns_ray and address in (None, "local") and runtime_env is None
            with (pending_trials_limit(spec), signals.fitting(), prestarted_actors(local),
                  without_tensorboard(_callbacks(tuner))):
                results = tuner.fit()
    except BaseException as err:
        if tracker is not None:
            tracker.close()
            with contextlib.suppress(Exception):  # the store may be what failed: the error is what matters
                parent.settle_children(tracker.statuses, tracker.started_trials)
        parent.fail(err)
        raise
    finally:
        if tracker is not None:
            tracker.close()
        _shutdown_ray(owns_ray)
    errors = next((c for c in _callbacks(tuner) if isinstance(c, RepeatedErrors)), None)
    return results, tracker, errors, signals.received


# Ray's lines that would contradict ours or name the wrong command: Tune's "interrupted, resume
# with Tuner.restore(...)" (ours names `tricksweep resume`), one "could not fetch metrics" per trial
# that never started or never reported, the list of trials "that did not complete", and the
# traceback of a trial that failed as the sweep stopped (its error was never fetched: Tune had let go).
_TUNE_NOISE = (
    "Stop signal received", "Experiment has been interrupted", "Training has been interrupted",
    "Trials did not complete", "Failed to fetch metrics", "Could not fetch metrics", "Unhandled error",
)


class _DropTuneNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_NOISE)


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress replaces Tune's tables and banners
    # Snapshot the experiment state often: a driver killed between snapshots loses that much bookkeeping.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # A failed trial is one line from Progress (its traceback stays in the trial's error.txt), not
    # a page of Ray's output per trial.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis", "ray.tune.execution.tune_controller",
                 "ray._private.worker"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTuneNoise) for f in logger.filters):
            logger.addFilter(_DropTuneNoise())


# -- record ------------------------------------------------------------------------------------


def record(results: Any, tracker: MlflowTrials, spec: SweepSpec, parent: ParentRun, started: float,
           errors: RepeatedErrors | None = None, interrupted: str | None = None) -> Outcome:
    """The leaderboard from Tune's results; child runs settled (and back-filled where MLflow
    missed epochs); the parent run given the leaderboard, the best checkpoint and its end:
    ``interrupted`` after a signal, ``failed`` when the repeated-error check stopped the sweep
    or every trial failed, else ``completed``."""
    trials = trial_records(results, tracker, spec)
    board = leaderboard.rank(trials, spec.metric, spec.mode, repeats=spec.repeats > 1)
    parent.settle_children({t.trial_id: t.status for t in trials}, tracker.started_trials)
    # Results Tune has but MLflow may miss: after a resume, a writer that gave up, or a signal (a
    # result Tune took in as the sweep stopped can miss its child run).
    if tracker.resumed or tracker.incomplete or interrupted:
        parent.backfill(_histories(results), spec.metric)
    status, error = "completed", None
    if interrupted:
        status = "interrupted"
    elif errors is not None and errors.message:
        status, error = "failed", errors.message
    elif trials and all(t.status == "failed" for t in trials):
        status, error = "failed", f"all {len(trials)} trials failed; the last: {tracker.error_lines[-1]}" \
            if tracker.error_lines else f"all {len(trials)} trials failed"
    _finish_parent(parent, results, board, spec, status, error)
    if status == "completed":  # an interrupted sweep registers once it is resumed and done
        registry.after_sweep(parent.uri, parent.run_id)  # the best model (unless registry: false)
    if spec.checkpoint.keep == "best_and_last":
        prune_checkpoints(results, spec.metric, spec.mode)
    best = board[0].best_trial if board else None
    best_config = next((r.config for r in results if best and (r.metrics or {}).get("trial_id") == best.trial_id), None)
    return Outcome(
        name=spec.name, tracking_uri=parent.uri, experiment_id=parent.experiment_id, parent_run_id=parent.run_id,
        ui_url=parent.ui_url(), experiment_path=results.experiment_path, leaderboard=board, trials=trials,
        wall_s=time.monotonic() - started, errors=results.num_errors, metric=spec.metric, mode=spec.mode,
        best_config=best_config, status=status, error=error, experiment=parent.experiment_name,
    )


def trial_records(results: Any, tracker: MlflowTrials, spec: SweepSpec) -> list[TrialRecord]:
    """Each trial of Tune's results that ran as a record: its params, per-epoch metrics and end
    status. A trial that never ran (still pending when the sweep was interrupted or stopped) is
    no record: it was neither stopped by ASHA nor anything else. One that was running then, Tune
    ends without a word to the callbacks: ``interrupted``."""
    records = []
    for result in results:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or Path(result.path).name
        status = tracker.statuses.get(trial_id)
        if status is None and result.error:
            status = "failed"
        if status is None and "epoch" not in last:  # Tune gives a trial that never ran {"trial_id": ...}
            continue  # never ran, or never reported an epoch: nothing to record
        if status is None:
            # Tune ended it without on_trial_complete (ASHA's stops do call it): the time budget
            # ran out, or the sweep was interrupted or stopped while it ran.
            out_of_time = spec.budget.time_limit_s is not None and tracker.elapsed_s >= spec.budget.time_limit_s
            status = end_status(last, max_epochs=spec.budget.max_epochs, asha=False, out_of_time=out_of_time)[0]
            if status == "stopped":
                status = "interrupted"
        history: dict[str, dict[int, float]] = {}
        for row in result_rows(result):
            epoch = int(row.get("epoch") or 0)
            for point in metric_points(row, epoch, 0):
                history.setdefault(point.key, {})[epoch] = point.value
        records.append(TrialRecord(trial_id, trial_name(trial_id), status, dsl.flatten(result.config or {}), history))
    return records


def result_rows(result: Any) -> list[dict]:
    """A trial's per-epoch results as Tune stored them (its result.json), and its last result when
    the file does not hold it yet: a result Tune took in as the sweep stopped may be in neither the
    file nor MLflow."""
    frame = result.metrics_dataframe
    rows = frame.to_dict("records") if frame is not None else []
    last = result.metrics or {}
    if "epoch" in last and last["epoch"] not in {row.get("epoch") for row in rows}:
        rows.append(last)
    return rows


def _histories(results: Any) -> dict[str, list[dict]]:
    """Each trial's per-epoch results as Tune has them (``result_rows``), by trial id."""
    return {result.metrics["trial_id"]: result_rows(result) for result in results
            if "trial_id" in (result.metrics or {})}


def _finish_parent(parent: ParentRun, results: Any, board: list[ConfigRow], spec: SweepSpec, status: str,
                   error: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp, "leaderboard.csv")
        leaderboard.write_csv(board, csv_path)
        parent.log_artifact(csv_path)
        tags = {"tricksweep.trials": str(sum(len(row.trials) for row in board))}
        if error:
            tags[ERROR_TAG] = error
        top = board[0] if board else None
        if top is not None and top.best_value is not None:
            best = top.best_trial
            parent.log_metric(f"best_{spec.metric}", top.best_value)
            tags["tricksweep.best_trial"] = best.trial_id
            if best_run_id := parent.child_run_id(best.trial_id):
                tags["tricksweep.best_run_id"] = best_run_id
            result = next((r for r in results if (r.metrics or {}).get("trial_id") == best.trial_id), None)
            checkpoint = _best_checkpoint(result, spec.metric, spec.mode) if result is not None else None
            if checkpoint is not None:
                with checkpoint.as_directory() as ckpt_dir:
                    parent.log_artifact(Path(ckpt_dir), "best_checkpoint")
                config = result.config or {}
                config_path = Path(tmp, "best_config.yaml")
                config_path.write_text(yaml.safe_dump({**config, "data": {**spec.dataset, **config.get("data", {})}},
                                                      sort_keys=False))
                parent.log_artifact(config_path, "best_checkpoint")
        parent.finish(status, tags)


def _best_checkpoint(result: Any, metric: str, mode: str) -> Any:
    scored = [(m.get(metric), c) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if scored:
        return (max if mode == "max" else min)(scored, key=lambda pair: pair[0])[1]
    return result.checkpoint


def prune_checkpoints(results: Any, metric: str, mode: str) -> int:
    """Delete every trial checkpoint but its best-scoring and its latest (what resuming an
    errored trial starts from); returns how many were deleted. While the sweep runs all are kept:
    Tune's saved state may point at any of them until the sweep is over."""
    deleted = 0
    for result in results:
        checkpoints = result.best_checkpoints or []
        scored = [(m[metric], c) for c, m in checkpoints
                  if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])]
        keep = {result.checkpoint.path} if result.checkpoint else set()
        if scored:
            keep.add((max if mode == "max" else min)(scored, key=lambda pair: pair[0])[1].path)
        for checkpoint, _ in checkpoints:
            if checkpoint.path not in keep:
                try:
                    checkpoint.filesystem.delete_dir(checkpoint.path)
                    deleted += 1
                except FileNotFoundError:
                    pass
    return deleted


# -- the two entry points ----------------------------------------------------------------------


def run_sweep(spec: LoadedSpec | str | Path | dict[str, Any], *, smoke_test: bool = False,
              tracking_uri: str | None = None, address: str | None = None, storage: str | None = None,
              echo: Callable[[str], None] = print, history: Any = None,
              parent_tags: dict[str, str] | None = None) -> Outcome:
    """Run a spec (a file, a dict of its keys, or ``load_spec``'s result) as a new sweep: a new Tune
    experiment and a new MLflow parent run. A spec that does not load raises SpecError before Ray starts.
    ``history`` and ``parent_tags``: an extend's lineage for the searcher, and its tags on the parent run."""
    started = time.monotonic()
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    plan = resolve(loaded, smoke=smoke_test, tracking_uri=tracking_uri, storage=storage, echo=echo)
    shipped = code_runtime_env(plan.loaded, address)
    # Ray first: the workers a local Ray prestarts start while MLflow is set up (prestarted_actors).
    owns_ray = ensure_ray(address, runtime_env=shipped)
    parent = None
    try:
        parent = start_parent(plan.loaded, uri=plan.tracking_uri, run_name=plan.run_name,
                              storage_path=plan.storage_path, smoke=plan.smoke)
        for key, value in (parent_tags or {}).items():
            parent.client.set_tag(parent.run_id, key, value)
    except BaseException as err:
        if parent is not None:
            parent.fail(err)
        _shutdown_ray(owns_ray)
        raise
    echo(f"sweep {plan.spec.name}: {plan.loaded.trials_total} trials x <= {plan.spec.budget.max_epochs} epochs, "
         f"MLflow run {parent.run_id} at {plan.tracking_uri}")
    return _run_and_record(
        lambda: build_tuner(plan.loaded, plan.storage_path, plan.run_name, callbacks(plan.spec, parent, echo),
                            history),
        plan.spec, parent, address, started, shipped, owns_ray,
    )


def _shutdown_ray(owns_ray: bool) -> None:
    if owns_ray:
        import ray

        ray.shutdown()


def _run_and_record(make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, parent: ParentRun, address: str | None,
                    started: float, runtime_env: dict[str, Any] | None, owns_ray: bool = False) -> Outcome:
    results, tracker, errors, interrupted = execute(make_tuner, spec, parent, address, runtime_env, owns_ray)
    try:
        return record(results, tracker, spec, parent, started, errors, interrupted)
    except BaseException as err:
        with contextlib.suppress(Exception):
            parent.settle_children(tracker.statuses, tracker.started_trials)
        parent.fail(err)
        raise


def resume_sweep(name: str, *, tracking_uri: str | None = None, address: str | None = None,
                 echo: Callable[[str], None] = print) -> Outcome:
    """Finish the latest run of sweep ``name`` after its driver died, it was interrupted, or its
    cluster restarted.

    Tune restores its experiment from the storage path recorded on the MLflow parent run
    (unpickling it: only resume from your own storage); unfinished and errored trials continue
    from their last checkpoints, and every trial keeps its child run under the same parent.
    """
    started = time.monotonic()
    parent = ParentRun.latest(resolve_tracking_uri(tracking_uri, None), name)
    tags = parent.client.get_run(parent.run_id).data.tags
    path = tags.get("tricksweep.storage_path", "")
    if not path or not tune.Tuner.can_restore(path):
        raise SpecError(f"resume {name}: no Tune experiment state at {path or '(no storage_path tag)'}; "
                        "nothing to resume")
    with tempfile.TemporaryDirectory() as tmp:
        # User code is imported from the folders the sweep was started with, not the download's.
        folders = tuple(filter(None, tags.get(CODE_PATHS_TAG, "").split(os.pathsep))) or None
        loaded = load_spec(parent.client.download_artifacts(parent.run_id, "spec/resolved_spec.yaml", tmp),
                           search_path=folders)
    if tags.get("tricksweep.smoke") == "true":
        loaded = loaded.smoke()
    shipped = code_runtime_env(loaded, address)
    parent.reopen()
    echo(f"resuming sweep {name}: MLflow run {parent.run_id}, Tune experiment {path}")
    return _run_and_record(lambda: restore_tuner(path, loaded, echo), loaded.spec, parent, address, started, shipped)

"""The driver: a sweep as a pipeline, resolve -> plan -> run -> record (the report comes after,
from MLflow alone: ``report.build_report``).

    outcome = run_sweep("sweeps/quickstart.yaml")       # or a dict of the spec's keys, or load_spec(...)
    outcome.best.name, outcome.best_value, outcome.best_config   # 'trial-00000', 0.9916, {'optimizer': {...}, ...}

- **resolve**: the spec as it will run (smoke mode, ``init.source`` files, absolute paths);
- **plan**: the Tuner with the trial function (``trial.run_trial``), searcher, ASHA and callbacks;
- **run**: Ray up, ``Tuner.fit``, the parent run failed if anything goes wrong;
- **record**: the leaderboard, the best checkpoint and the end status on the parent run.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from tricksweep import leaderboard, registry, search, shipping
from tricksweep import space as dsl
from tricksweep.callbacks import MlflowTrials, Progress
from tricksweep.errors import SpecError
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
from tricksweep.trial import TrialContext, run_trial


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

    @property
    def best(self) -> TrialRecord | None:
        """The best trial of the best configuration."""
        return self.leaderboard[0].best_trial if self.leaderboard else None

    @property
    def best_value(self) -> float | None:
        return self.leaderboard[0].best_value if self.leaderboard else None

    @property
    def failed(self) -> bool:
        return bool(self.trials) and all(t.status == "failed" for t in self.trials)


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
    loaded = resolve_sources(loaded, uri, echo)  # init.source {sweep: ...} / {mlflow: ...} -> local files
    run_name = f"{loaded.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Resolved(loaded, uri, _storage_path(storage or loaded.spec.storage), run_name, smoke)


def _storage_path(value: str | None) -> str:
    if value and "://" in value:
        return value  # s3://, gs://: shared storage for a cluster
    return str(Path(value or "runs").expanduser().resolve())


# -- plan --------------------------------------------------------------------------------------


def fixed_inputs(spec: SweepSpec) -> dict[str, Any]:
    """What every trial shares (``TrialInfo`` but the seed and device): dataset, epoch budget, checkpoint cadence."""
    return {"data": spec.dataset, "epochs": spec.budget.max_epochs, "checkpoint_every": spec.checkpoint.every_epochs}


def trial_trainable(loaded: LoadedSpec) -> Any:
    """``run_trial`` with the trainable's import string and folders, the spec's fixed inputs, the
    weights files its space names, and per-trial resources attached."""
    spec, trainable = loaded.spec, loaded.trainable
    ctx = TrialContext(
        module=trainable.module,
        function=trainable.function,
        code_paths=loaded.code_paths,
        metric=None if trainable.metrics is not None else spec.metric,  # declared ones were checked by load_spec
        cpus=spec.resources.cpu,
        gpus=spec.resources.gpu,
        sources=shipped_files(loaded.space),
        **fixed_inputs(spec),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **spec.resources.custom}
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


def callbacks(spec: SweepSpec, parent: ParentRun, echo: Callable[[str], None]) -> list[tune.Callback]:
    """The MLflow child runs and the console progress."""
    tracker = MlflowTrials(
        parent.uri, parent.experiment_id, parent.run_id,
        max_epochs=spec.budget.max_epochs, asha=isinstance(spec.scheduler, Asha), time_limit_s=spec.budget.time_limit_s,
    )
    return [tracker, Progress(spec.metric, spec.mode, tracker.statuses, echo)]


def build_tuner(loaded: LoadedSpec, storage_path: str, run_name: str, callbacks: list) -> tune.Tuner:
    """The Tuner for a validated spec (Ray must be running: weights files go to its object store)."""
    from ray.tune.schedulers import ASHAScheduler

    spec = loaded.spec
    scheduler = None
    if isinstance(spec.scheduler, Asha):
        scheduler = ASHAScheduler(
            time_attr="epoch",  # the trainable's epoch is the clock, not Tune's report count
            max_t=spec.budget.max_epochs,
            grace_period=spec.scheduler.grace_epochs,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    search_alg, num_samples, param_space = search.build(loaded.space, spec)
    return tune.Tuner(
        trial_trainable(loaded),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            time_budget_s=spec.budget.time_limit_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            callbacks=callbacks,
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
    """Start (or attach to) Ray unless it already runs in this process; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "local"):
        # A private in-process cluster: token auth protects nothing here and breaks on a stale token.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address=address or "local",
        num_cpus=cpus if address in (None, "local") else None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env=runtime_env,
    )
    return True


def execute(make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, parent: ParentRun,
            address: str | None, runtime_env: dict[str, Any] | None = None) -> tuple[Any, MlflowTrials]:
    """Ray up, the Tuner made and fitted; Tune's results and the tracker, drained. Whatever fails
    on the way, the parent run is not left RUNNING."""
    _quiet_tune()
    fitted, owns_ray, tracker = False, False, None
    try:
        owns_ray = ensure_ray(address, runtime_env=runtime_env)
        tuner = make_tuner()
        tracker = next(c for c in _callbacks(tuner) if isinstance(c, MlflowTrials))
        with pending_trials_limit(spec):
            results = tuner.fit()
        fitted = True
    finally:
        if tracker is not None:
            tracker.close()
        if not fitted:
            parent.finish("failed", {ERROR_TAG: "the sweep driver stopped before Tune finished"})
        if owns_ray:
            import ray

            ray.shutdown()
    return results, tracker


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress replaces Tune's tables and banners
    # Snapshot the experiment state often: a driver killed between snapshots loses that much bookkeeping.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")


# -- record ------------------------------------------------------------------------------------


def record(results: Any, tracker: MlflowTrials, spec: SweepSpec, parent: ParentRun, started: float) -> Outcome:
    """The leaderboard from Tune's results; child runs settled (and back-filled where MLflow
    missed epochs); the parent run given the leaderboard, the best checkpoint and its end."""
    trials = trial_records(results, tracker.statuses, spec)
    board = leaderboard.rank(trials, spec.metric, spec.mode, repeats=spec.repeats > 1)
    parent.settle_children({t.trial_id: t.status for t in trials}, tracker.started_trials)
    if tracker.resumed or tracker.incomplete:  # results Tune has but MLflow may miss
        parent.backfill(_histories(results), spec.metric)
    failed = bool(trials) and all(t.status == "failed" for t in trials)
    _finish_parent(parent, results, board, spec, "failed" if failed else "completed")
    registry.after_sweep(parent.uri, parent.run_id)  # the best model, registered (unless registry: false)
    if spec.checkpoint.keep == "best_and_last":
        prune_checkpoints(results, spec.metric, spec.mode)
    best = board[0].best_trial if board else None
    best_config = next((r.config for r in results if best and (r.metrics or {}).get("trial_id") == best.trial_id), None)
    return Outcome(
        name=spec.name, tracking_uri=parent.uri, experiment_id=parent.experiment_id, parent_run_id=parent.run_id,
        ui_url=parent.ui_url(), experiment_path=results.experiment_path, leaderboard=board, trials=trials,
        wall_s=time.monotonic() - started, errors=results.num_errors, metric=spec.metric, mode=spec.mode,
        best_config=best_config,
    )


def trial_records(results: Any, statuses: dict[str, str], spec: SweepSpec) -> list[TrialRecord]:
    """Each trial of Tune's results as a record: its params, per-epoch metrics and end status."""
    records = []
    for result in results:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or Path(result.path).name
        status = statuses.get(trial_id)
        if status is None:
            asha = isinstance(spec.scheduler, Asha)
            status = "failed" if result.error else end_status(last, max_epochs=spec.budget.max_epochs, asha=asha,
                                                               out_of_time=False)[0]
        frame = result.metrics_dataframe
        rows = frame.to_dict("records") if frame is not None else ([last] if last else [])
        history: dict[str, dict[int, float]] = {}
        for row in rows:
            epoch = int(row.get("epoch") or 0)
            for point in metric_points(row, epoch, 0):
                history.setdefault(point.key, {})[epoch] = point.value
        records.append(TrialRecord(trial_id, trial_name(trial_id), status, dsl.flatten(result.config or {}), history))
    return records


def _histories(results: Any) -> dict[str, list[dict]]:
    """Each trial's per-epoch results as Tune stored them (its result.json)."""
    out = {}
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and "trial_id" in result.metrics:
            out[result.metrics["trial_id"]] = frame.to_dict("records")
    return out


def _finish_parent(parent: ParentRun, results: Any, board: list[ConfigRow], spec: SweepSpec, status: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp, "leaderboard.csv")
        leaderboard.write_csv(board, csv_path)
        parent.log_artifact(csv_path)
        tags = {"tricksweep.trials": str(sum(len(row.trials) for row in board))}
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
              echo: Callable[[str], None] = print) -> Outcome:
    """Run a spec (a file, a dict of its keys, or ``load_spec``'s result) as a new sweep: a new Tune
    experiment and a new MLflow parent run. A spec that does not load raises SpecError before Ray starts."""
    started = time.monotonic()
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    plan = resolve(loaded, smoke=smoke_test, tracking_uri=tracking_uri, storage=storage, echo=echo)
    shipped = code_runtime_env(plan.loaded, address)
    parent = start_parent(plan.loaded, uri=plan.tracking_uri, run_name=plan.run_name,
                          storage_path=plan.storage_path, smoke=plan.smoke)
    echo(f"sweep {plan.spec.name}: {plan.loaded.trials_total} trials x <= {plan.spec.budget.max_epochs} epochs, "
         f"MLflow run {parent.run_id} at {plan.tracking_uri}")
    results, tracker = execute(
        lambda: build_tuner(plan.loaded, plan.storage_path, plan.run_name, callbacks(plan.spec, parent, echo)),
        plan.spec, parent, address, shipped,
    )
    return record(results, tracker, plan.spec, parent, started)


def resume_sweep(name: str, *, tracking_uri: str | None = None, address: str | None = None,
                 echo: Callable[[str], None] = print) -> Outcome:
    """Finish the latest run of sweep ``name`` after its driver died or its cluster restarted.

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
    results, tracker = execute(lambda: restore_tuner(path, loaded, echo), loaded.spec, parent, address, shipped)
    return record(results, tracker, loaded.spec, parent, started)

"""Builds the Ray Tune experiment for a spec, runs it, and records it in MLflow.

    outcome = run_sweep(load_spec("sweeps/quickstart.yaml"))
    outcome.best["val_accuracy"]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from ray import tune

from tricksweep import __version__
from tricksweep import space as dsl
from tricksweep.search import build_search, pending_trials_limit
from tricksweep.report import Row, leaderboard, leaderboard_table, write_leaderboard_csv
from tricksweep.sources import ShippedFile, localize, resolve_sources, shipped_files
from tricksweep.errors import SpecError
from tricksweep.spec import Asha, LoadedSpec, SweepSpec, load_spec
from tricksweep.tracking import (
    ERROR_TAG,
    SWEEP_TAG,
    MlflowTrials,
    SweepRun,
    end_status,
    error_line,
    git_sha,
    resolve_tracking_uri,
    spec_params,
    trial_name,
)

SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config; shipped once via ``with_parameters``."""

    module: str  # the trainable's import path, resolved on the driver (workers need no registry)
    fixed: dict[str, Any]  # dataset, epochs, checkpoint cadence: the same for every trial
    cpus: float
    gpus: float
    sources: dict[str, ShippedFile] = field(default_factory=dict)  # weights files, by driver path


class TuneReport:
    """The trainable's ``report``, backed by Tune: the engine's only use of Tune's reporting API."""

    def __call__(self, *, epoch: int, metrics: dict[str, float], checkpoint: str | None = None, end: str | None = None) -> None:
        tune.report(
            {**metrics, "epoch": epoch, "end": end or ""},
            checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None,
        )

    def restore(self) -> str | None:
        checkpoint = tune.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune's function trainable: validate the sampled config and hand it to the trainable."""
    import importlib

    import torch

    torch.set_num_threads(max(1, int(ctx.cpus)))  # threads follow the CPUs Ray reserved
    module = importlib.import_module(ctx.module)
    device = "cpu"
    if ctx.gpus > 0:
        # Ray set CUDA_VISIBLE_DEVICES to the GPU it assigned (shared when gpu < 1): it is cuda:0 here.
        if not torch.cuda.is_available():
            raise RuntimeError(f"resources.gpu = {ctx.gpus:g}: Ray assigned a GPU but torch sees no CUDA device")
        device = "cuda"
    config = localize(config, ctx.sources)
    cfg = module.Config.model_validate({**config, **ctx.fixed, "data": {**ctx.fixed["data"], **config.get("data", {})}, "device": device})
    module.train(cfg, TuneReport())


@dataclass
class SweepOutcome:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    ui_url: str
    experiment_path: str
    rows: list[Row]
    wall_s: float
    errors: int
    metric: str
    mode: str
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> Row | None:
        return self.rows[0] if self.rows else None


def smoke(spec: SweepSpec) -> SweepSpec:
    """2 trials x 2 epochs: checks a spec runs end to end in seconds (with repeats: 1 configuration x 2 seeds)."""
    repeats = min(spec.repeats, 2)
    budget = {"trials": 2 // repeats, "max_epochs": 2, "time_limit_s": None, "max_total_epochs": None}
    update: dict[str, Any] = {"budget": spec.budget.model_copy(update=budget), "repeats": repeats}
    if isinstance(spec.scheduler, Asha):
        update["scheduler"] = spec.scheduler.model_copy(update={"grace_epochs": 1})
    if spec.searcher == "grid":
        update["searcher"] = "random"
    return spec.model_copy(update=update)


def param_space(loaded: LoadedSpec) -> dict[str, Any]:
    """Tune's param_space (searchers that sample the space themselves get only a seed placeholder)."""
    return build_search(loaded.space, loaded.spec)[2]


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
        raise SpecError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}) within {timeout_s:g} s") from None
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


def ensure_ray(address: str | None, cpus: int | None = None) -> bool:
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
    )
    return True


def run_sweep(
    loaded: LoadedSpec,
    *,
    smoke_test: bool = False,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run a validated spec as a new sweep: a new Tune experiment and a new MLflow parent run."""
    spec = loaded.spec
    if smoke_test:  # one random point of every grid, so that smoke mode stays at 2 trials
        spec = smoke(loaded.spec)
        loaded = dataclasses.replace(loaded, space=dsl.without_grids(loaded.space))
    _quiet_tune()
    started = time.monotonic()
    uri = resolve_tracking_uri(tracking_uri, spec.tracking.uri)
    loaded = resolve_sources(loaded, uri, echo)  # init.source {sweep: ...} / {mlflow: ...} -> local files
    storage_path = _storage_path(storage or spec.storage)
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    sweep = SweepRun(uri, spec.tracking.experiment or spec.name)
    parent_id = sweep.start(
        run_name,
        spec_params(spec.model_dump(mode="json"), loaded.raw_space),
        _parent_tags(loaded, spec, smoke_test, storage_path, run_name),
    )
    _log_spec_files(sweep, loaded, spec)
    trials = spec.budget.trials * dsl.grid_points(loaded.space, spec.searcher == "grid") * spec.repeats
    echo(f"sweep {spec.name}: {trials} trials x <= {spec.budget.max_epochs} epochs, "
         f"MLflow run {parent_id} at {uri}")
    tracker = MlflowTrials(
        uri, sweep.experiment_id, parent_id,
        max_epochs=spec.budget.max_epochs, asha=isinstance(spec.scheduler, Asha), time_limit_s=spec.budget.time_limit_s,
    )
    progress = Progress(spec.metric, spec.mode, tracker.statuses, echo)
    return _fit_and_record(
        lambda: build_tuner(loaded, spec, storage_path, run_name, [tracker, progress]), spec, sweep, address, started
    )


def resume_sweep(
    name: str, *, tracking_uri: str | None = None, address: str | None = None, echo: Callable[[str], None] = print
) -> SweepOutcome:
    """Finish the latest run of sweep ``name`` after its driver died or its cluster restarted.

    Tune restores its experiment from the storage path recorded on the MLflow parent run
    (unpickling it: only resume from your own storage); unfinished and errored trials continue
    from their last checkpoints, and every trial keeps its child run under the same parent.
    """
    _quiet_tune()
    started = time.monotonic()
    uri = resolve_tracking_uri(tracking_uri, None)
    sweep = SweepRun.latest(uri, name)
    tags = sweep.client.get_run(sweep.run_id).data.tags
    path = tags.get("tricksweep.storage_path", "")
    if not path or not tune.Tuner.can_restore(path):
        raise SpecError(f"resume {name}: no Tune experiment state at {path or '(no storage_path tag)'}; nothing to resume")
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = sweep.client.download_artifacts(sweep.run_id, "spec/resolved_spec.yaml", tmp)
        loaded = load_spec(spec_file)
    spec = smoke(loaded.spec) if tags.get("tricksweep.smoke") == "true" else loaded.spec
    sweep.reopen()
    echo(f"resuming sweep {name}: MLflow run {sweep.run_id}, Tune experiment {path}")

    def restore() -> tune.Tuner:
        tuner = tune.Tuner.restore(path, trainable=trial_trainable(spec, loaded.space), resume_unfinished=True, resume_errored=True)
        for callback in _callbacks(tuner):
            if isinstance(callback, Progress):
                callback.echo = echo  # not pickled: the console belongs to this process
            if isinstance(callback, MlflowTrials):
                callback.resumed = True
        return tuner

    return _fit_and_record(restore, spec, sweep, address, started)


def _fit_and_record(
    make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, sweep: SweepRun, address: str | None, started: float
) -> SweepOutcome:
    status, owns_ray, tracker = "failed", False, None
    try:  # from here on the parent run must not be left RUNNING, whatever fails
        owns_ray = ensure_ray(address)
        tuner = make_tuner()
        tracker = next(c for c in _callbacks(tuner) if isinstance(c, MlflowTrials))
        with pending_trials_limit(spec):
            grid = tuner.fit()
        status = "completed"
    finally:
        if tracker is not None:
            tracker.close()
        if status != "completed":
            sweep.finish("failed", {ERROR_TAG: "the sweep driver stopped before Tune finished"})
        if owns_ray:
            import ray

            ray.shutdown()

    asha = isinstance(spec.scheduler, Asha)
    rows = leaderboard(grid, spec.metric, spec.mode, tracker.statuses, spec.budget.max_epochs, asha)
    if rows and all(r.status == "failed" for r in rows):
        status = "failed"
    sweep.settle_children({r.trial_id: r.status for r in rows}, tracker.started_trials)
    if tracker.resumed or tracker.incomplete:  # results Tune has but MLflow may miss
        sweep.backfill(_histories(grid), spec.metric)
    _finish_parent(sweep, grid, rows, spec, status)
    if spec.checkpoint.keep == "best_and_last":
        prune_checkpoints(grid, spec.metric, spec.mode)
    return SweepOutcome(
        name=spec.name, tracking_uri=sweep.uri, experiment_id=sweep.experiment_id, parent_run_id=sweep.run_id,
        ui_url=sweep.ui_url(), experiment_path=grid.experiment_path, rows=rows,
        wall_s=time.monotonic() - started, errors=grid.num_errors, metric=spec.metric, mode=spec.mode,
        statuses=dict(tracker.statuses),
    )


def _histories(grid: Any) -> dict[str, list[dict]]:
    """Each trial's per-epoch results as Tune stored them (its result.json)."""
    out = {}
    for result in grid:
        frame = result.metrics_dataframe
        if frame is not None and "trial_id" in result.metrics:
            out[result.metrics["trial_id"]] = frame.to_dict("records")
    return out


def _callbacks(tuner: tune.Tuner) -> list:
    # Tuner has no public accessor for its run config; after Tuner.restore this is the only way
    # to reach the callbacks it unpickled.
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress replaces Tune's tables and banners
    # Snapshot the experiment state often: a driver killed between snapshots loses that much bookkeeping.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")


def fixed_inputs(spec: SweepSpec) -> dict[str, Any]:
    """The trainable config every trial shares: dataset, epoch budget, checkpoint cadence."""
    return {"data": spec.dataset, "epochs": spec.budget.max_epochs, "checkpoint_every": spec.checkpoint.every_epochs}


def trial_trainable(spec: SweepSpec, space: dsl.Node) -> Any:
    """``run_trial`` with the spec's fixed inputs, the weights files its space names, and
    per-trial resources attached."""
    from trainables import TRAINABLES

    ctx = TrialContext(
        module=TRAINABLES[spec.trainable],
        fixed=fixed_inputs(spec),
        cpus=spec.resources.cpu,
        gpus=spec.resources.gpu,
        sources=shipped_files(space),
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **spec.resources.custom}
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


def build_tuner(loaded: LoadedSpec, spec: SweepSpec, storage_path: str, run_name: str, callbacks: list) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if isinstance(spec.scheduler, Asha):
        scheduler = ASHAScheduler(
            time_attr="epoch",  # the trainable's epoch is the clock, not Tune's report count
            max_t=spec.budget.max_epochs,
            grace_period=spec.scheduler.grace_epochs,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    search_alg, num_samples, space = build_search(loaded.space, spec)
    return tune.Tuner(
        trial_trainable(spec, loaded.space),
        param_space=space,
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


class Progress(tune.Callback):
    """Live progress on the console: a line per finished trial, a summary every few seconds."""

    def __init__(self, metric: str, mode: str, statuses: dict[str, str], echo: Callable[[str], None], every_s: float = 10.0):
        self.metric, self.mode, self.statuses, self.echo, self.every_s = metric, mode, statuses, echo, every_s
        self.best: tuple[float, str, int] | None = None
        self._started = time.monotonic()
        self._last = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "echo": print}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), _short(trial), int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        status = self.statuses.get(trial.trial_id, "done").replace("_", " ")
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        self.echo(f"  {_short(trial)} {status} at epoch {last.get('epoch', 0)}: {self.metric} {shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.echo(f"  {_short(trial)} failed: {error_line(trial)}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        counts: dict[str, int] = {}
        for t in trials:
            state = self.statuses.get(t.trial_id) or t.status.lower()
            counts[state] = counts.get(state, 0) + 1
        parts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
        best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]}, epoch {self.best[2]})" if self.best else ""
        elapsed = int(now - self._started)
        self.echo(f"[{elapsed // 60}:{elapsed % 60:02d}] {len(trials)} trials: {parts}{best}")


def _short(trial: Any) -> str:
    return trial_name(trial.trial_id)


def _storage_path(value: str | None) -> str:
    if value and "://" in value:
        return value  # s3://, gs://: shared storage for a cluster
    return str(Path(value or "runs").expanduser().resolve())


def _parent_tags(loaded: LoadedSpec, spec: SweepSpec, smoke_test: bool, storage_path: str, run_name: str) -> dict[str, str]:
    import mlflow
    import ray
    import torch

    tags = {
        SWEEP_TAG: "parent",
        "tricksweep.trainable": spec.trainable,
        "tricksweep.searcher": spec.searcher,
        "tricksweep.repeats": str(spec.repeats),
        "tricksweep.scheduler": spec.scheduler.type,
        "tricksweep.storage_path": f"{storage_path}/{run_name}",
        "tricksweep.spec_file": str(loaded.path.resolve()),
        "tricksweep.smoke": str(smoke_test).lower(),
        "tricksweep.version": __version__,
        "tricksweep.versions": f"ray {ray.__version__}, torch {torch.__version__}, mlflow {mlflow.__version__}",
    }
    if sha := git_sha(loaded.path.resolve().parent):
        tags["mlflow.source.git.commit"] = sha
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    return tags


def _log_spec_files(sweep: SweepRun, loaded: LoadedSpec, spec: SweepSpec) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp, "resolved_spec.yaml")
        data = yaml.safe_load(loaded.resolved_yaml())
        data.update(spec.model_dump(mode="json", exclude={"space", "include"}))
        resolved.write_text(yaml.safe_dump(data, sort_keys=False))
        sweep.log_artifact(resolved, "spec")
    sweep.log_artifact(loaded.path, "spec")
    for path in loaded.fragments.values():
        sweep.log_artifact(path, "spec/search_spaces")


def _finish_parent(sweep: SweepRun, grid: Any, rows: list[Row], spec: SweepSpec, status: str) -> None:
    from mlflow.entities import Metric

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp, "leaderboard.csv")
        write_leaderboard_csv(rows, csv_path)
        sweep.log_artifact(csv_path)
        best = rows[0] if rows else None
        tags = {"tricksweep.trials": str(len(rows))}
        if best is not None and best.value is not None:
            sweep.client.log_batch(sweep.run_id, metrics=[Metric(f"best_{spec.metric}", best.value, int(time.time() * 1000), 0)])
            tags["tricksweep.best_trial"] = best.trial_id
            if best_run_id := sweep.child_run_id(best.trial_id):
                tags["tricksweep.best_run_id"] = best_run_id
            checkpoint = _best_checkpoint(grid, best.trial_id, spec.metric, spec.mode)
            if checkpoint is not None:
                with checkpoint.as_directory() as ckpt_dir:
                    sweep.log_artifact(Path(ckpt_dir), "best_checkpoint")
                config_path = Path(tmp, "best_config.yaml")
                config_path.write_text(yaml.safe_dump({**best.config, "data": {**spec.dataset, **best.config.get("data", {})}}, sort_keys=False))
                sweep.log_artifact(config_path, "best_checkpoint")
        sweep.finish(status, tags)


def prune_checkpoints(grid: Any, metric: str, mode: str) -> int:
    """Delete every trial checkpoint but its best-scoring and its latest (what resuming an
    errored trial starts from); returns how many were deleted. While the sweep runs all are kept:
    Tune's saved state may point at any of them until the sweep is over."""
    deleted = 0
    for result in grid:
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


def _best_checkpoint(grid: Any, trial_id: str, metric: str, mode: str) -> Any:
    for result in grid:
        if result.metrics.get("trial_id") != trial_id:
            continue
        scored = [(m.get(metric), c) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
        if scored:
            return (max if mode == "max" else min)(scored, key=lambda pair: pair[0])[1]
        return result.checkpoint
    return None

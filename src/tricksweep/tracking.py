"""The MLflow write side: one parent run per sweep (``ParentRun``), the names of the tags that
give the sweep its shape, the tracking URI and the store. No Ray here.

Child runs, one per trial, are written by ``writer.Writer`` on its own thread, fed by the Tune
callback in ``callbacks.py``, so a slow or absent tracking server never blocks a trial.

    parent = ParentRun(resolve_tracking_uri(None, None), "quickstart")
    parent.start("quickstart-20261201-120000", params, tags)
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tricksweep.errors import SpecError, did_you_mean
from tricksweep.space import flatten, is_domain

if TYPE_CHECKING:
    from tricksweep.spec import LoadedSpec

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "tricksweep.trial_id"
STATUS_TAG = "tricksweep.status"
ERROR_TAG = "tricksweep.error"  # one line: why a trial or sweep failed
CODE_PATHS_TAG = "tricksweep.code_paths"  # folders user code was imported from (os.pathsep-joined), for resume
SWEEP_TAG = "tricksweep.sweep"
RESUMED_TAG = "tricksweep.resumed"
OOM_RETRIES_TAG = "tricksweep.oom_retries"  # times a trial was retried with a larger GPU memory share
GPU_TAG = "tricksweep.gpu"  # node_ip/gpu index a GPU trial ran on (the report's GPU timeline)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# Keys Tune adds to every result; they are bookkeeping, not the trainable's metrics.
TUNE_KEYS = frozenset(
    {
        "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
        "iterations_since_restore", "training_iteration", "done", "trial_id", "date", "checkpoint_dir_name",
        "should_checkpoint", "config", "experiment_tag", "epoch", "end",
    }
)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
# How a sweep (its parent run) ended, and the MLflow run status each end gets.
SWEEP_END = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def resolve_tracking_uri(flag: str | None, spec_uri: str | None, cwd: Path | None = None) -> str:
    """``--tracking-uri`` > the spec > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``.

    Relative sqlite paths become absolute: trials and MLflow's own fallback resolve them from
    other working directories.
    """
    uri = flag or spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    cwd = cwd or Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    elif "://" not in uri:  # a bare folder means a file store
        uri = str((cwd / uri).resolve())
    return uri


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (absolute after resolve_tracking_uri)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``, its store opened under a lock when it is a sqlite file.

    MLflow creates and migrates a new database file on first open, without any lock: two sweeps
    started at once in one folder would both create its tables and one would crash ("table ...
    already exists"). The lock file lives in tricksweep's cache, keyed by the database's path,
    so nothing appears beside the database; where the cache is not writable, no lock is taken.
    """
    import hashlib

    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    from trainables.data import cache_dir

    lock = None
    if (db := sqlite_file(uri)) is not None:
        locks = cache_dir() / "locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(locks / f"{hashlib.sha256(str(db).encode()).hexdigest()[:20]}.lock"))
            lock.acquire()
        except OSError as err:
            log.debug("opening %s without a lock: %s", db, err)
            lock = None
    try:
        return MlflowClient(tracking_uri=uri)  # opens the store: creates and migrates it if new
    finally:
        if lock is not None:
            lock.release()


def end_status(last: dict | None, *, max_epochs: int, asha: bool, out_of_time: bool) -> tuple[str, dict[str, str]]:
    """How a trial that was not an error ended, and the tags that say so."""
    last = last or {}
    epoch = int(last.get("epoch") or 0)
    tags = {"tricksweep.epochs": str(epoch)}
    if last.get("end"):
        return last["end"], tags
    if epoch >= max_epochs:
        return "completed", tags
    if out_of_time:
        return "stopped_by_budget", tags
    if asha:
        return "stopped_by_asha", {**tags, "tricksweep.rung": str(epoch)}
    return "stopped", tags


def run_status(status: str) -> str:
    """The MLflow run status of a child run that ended with tricksweep ``status``."""
    ended = {"failed": "FAILED", "infeasible": "FAILED", "interrupted": "KILLED", "lost": "KILLED"}
    return ended.get(status, "FINISHED")


def exception_line(err: BaseException, limit: int = 500) -> str:
    """An exception as one line, ``KeyError: 'ftp'``: its last non-empty line, cut to ``limit``."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric_points(result: dict, epoch: int, stamp_ms: int) -> list:
    """A trial result's numeric metrics as MLflow points at step = epoch: Tune's bookkeeping and
    the config (flattened to ``config/...`` in Tune's stored results) left out."""
    from mlflow.entities import Metric

    return [
        Metric(key, float(value), stamp_ms, epoch)
        for key, value in result.items()
        if key not in TUNE_KEYS and not key.startswith("config/")
        and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def git_sha(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class ParentRun:
    """The parent run of one sweep: created before Tune starts, finished after it returns."""

    def __init__(self, uri: str, experiment: str):
        # MLflow prints a "View run" link per ended run against a server: noise between our progress lines.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.experiment_name = experiment
        self.client = open_client(uri)
        self.experiment_id = self._get_or_create_experiment()
        self.run_id: str | None = None
        self.finished = False  # finish() was called: the run has its end

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            try:
                # The kind tag marks a model-training experiment for MLflow 3's UI (its GenAI view then
                # lists the experiment's training runs too); the link we print selects the view itself.
                return self.client.create_experiment(self.experiment_name, artifact_location=self._artifact_root(),
                                                     tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # Another sweep created it between our lookup and our create.
                found = self.client.get_experiment_by_name(self.experiment_name)
        if found.lifecycle_stage == "deleted":
            # Deleted in the UI but still in the store (names stay taken): bring it back.
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _artifact_root(self) -> str | None:
        # Keep artifacts beside a sqlite file rather than under whatever folder the driver ran in.
        db = sqlite_file(self.uri)
        return (db.parent / "mlruns" / self.experiment_name).as_uri() if db else None

    @classmethod
    def latest(cls, uri: str, name: str) -> ParentRun:
        """The most recent parent run of sweep ``name``; SpecError listing the sweeps found if none."""
        client = open_client(uri)
        experiment = client.get_experiment_by_name(name)
        parents = []
        if experiment is not None:
            parents = client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
        if not parents:
            found = [
                e.name for e in client.search_experiments()
                if client.search_runs([e.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'", max_results=1)
            ]
            if not found:
                raise SpecError(f"sweep = {name!r}: no sweeps recorded in {uri}; "
                                "check --tracking-uri or MLFLOW_TRACKING_URI")
            raise SpecError(
                f"sweep = {name!r}: no sweep of that name in {uri}{did_you_mean(name, found)}; "
                f"sweeps found: {', '.join(sorted(found))}"
            )
        sweep = cls(uri, name)
        sweep.run_id = parents[0].info.run_id
        return sweep

    def reopen(self) -> None:
        """Mark a resumed parent run as running again and count the resumes; how it ended last
        time (status and error tags) no longer holds."""
        tags = self.client.get_run(self.run_id).data.tags
        self.client.update_run(self.run_id, status="RUNNING")
        self.finished = False
        self.client.set_tag(self.run_id, "tricksweep.resumes", str(int(tags.get("tricksweep.resumes", "0")) + 1))
        for key in (STATUS_TAG, ERROR_TAG):
            if key in tags:
                self.client.delete_tag(self.run_id, key)

    def settle_children(self, statuses: dict[str, str], started: set[str]) -> None:
        """End every child run still running, with the status Tune's results imply; none is left
        running. After a driver crash, a trial can have finished in Tune's saved state before its
        MLflow end was written. A trial begun after Tune's last snapshot is unknown to the resumed
        sweep, which draws another in its place (Optuna gives it a new id): a child whose trial is
        not in ``started`` (every trial the sweep's Tune state ever started) is ``lost``. A trial
        the sweep left without any end (it was running when the sweep was interrupted or stopped)
        is ``interrupted``."""
        from mlflow.entities import RunTag

        for child in self.children():
            tags = child.data.tags
            if child.info.status != "RUNNING" and STATUS_TAG in tags:
                continue
            trial_id = tags.get(TRIAL_TAG, "")
            if trial_id not in started:
                status = "lost"
                self.client.log_batch(child.info.run_id, tags=[
                    RunTag(STATUS_TAG, status),
                    RunTag(ERROR_TAG, "the driver died before Tune's snapshot recorded this trial; "
                                      "the resumed sweep ran another in its place"),
                ])
            else:
                # Its end tag may have been written when its run's end was not (a driver killed between).
                status = statuses.get(trial_id) or tags.get(STATUS_TAG) or "interrupted"
                self.client.set_tag(child.info.run_id, STATUS_TAG, status)
            self.client.set_terminated(child.info.run_id, run_status(status))

    def backfill(self, histories: dict[str, list[dict]], probe: str) -> int:
        """Write the epochs Tune recorded that MLflow missed: results still queued in the writer
        when a driver died are in Tune's trial results (result.json), which a resumed sweep reads
        back. ``histories`` maps trial id to its result rows; an epoch counts as recorded when its
        ``probe`` metric is in MLflow. Returns the points written."""
        written = 0
        for child in self.children():
            rows = histories.get(child.data.tags.get(TRIAL_TAG, ""))
            if not rows:
                continue
            have = {m.step for m in self.client.get_metric_history(child.info.run_id, probe)}
            points = []
            for row in rows:
                epoch = int(row.get("epoch") or 0)
                if epoch < 1 or epoch in have:
                    continue
                have.add(epoch)  # an epoch repeated after a restore keeps its first record
                points += metric_points(row, epoch, int(float(row.get("timestamp") or time.time()) * 1000))
            for i in range(0, len(points), 1000):
                self.client.log_batch(child.info.run_id, metrics=points[i : i + 1000])
            written += len(points)
        return written

    def children(self) -> list:
        """The sweep's child runs (one per trial)."""
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'", max_results=10000
        )

    def child_run_id(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        return self.run_id

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_metric(self, key: str, value: float) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(key, value, int(time.time() * 1000), 0)])

    def log_spec_files(self, loaded: LoadedSpec) -> None:
        """The resolved spec (fragments inlined, defaults filled in), the spec file and its fragments."""
        import tempfile

        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp, "resolved_spec.yaml")
            data = yaml.safe_load(loaded.resolved_yaml())
            data.update(loaded.spec.model_dump(mode="json", exclude={"space", "include"}))
            resolved.write_text(yaml.safe_dump(data, sort_keys=False))
            self.log_artifact(resolved, "spec")
        if loaded.path is not None:  # a spec given as a dict has only the resolved one
            self.log_artifact(loaded.path, "spec")
        for path in loaded.fragments.values():
            self.log_artifact(path, "spec/search_spaces")

    def finish(self, status: str, tags: dict[str, str]) -> None:
        """End the run: ``status`` is a key of ``SWEEP_END`` (``interrupted``: MLflow's KILLED),
        written as ``tricksweep.status`` with ``tags``."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in {**tags, STATUS_TAG: status}.items()])
        self.client.set_terminated(self.run_id, SWEEP_END[status])
        self.finished = True

    def fail(self, err: BaseException) -> None:
        """End the run for ``err`` (a KeyboardInterrupt is an interruption) unless it has ended;
        never raises, so ``err`` is what the caller sees."""
        if self.finished or self.run_id is None:
            return
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        try:
            self.finish(status, {} if status == "interrupted" else {ERROR_TAG: exception_line(err)})
        except Exception as finish_err:  # noqa: BLE001 - the store may be what failed
            log.warning("MLflow: could not end parent run %s: %s", self.run_id, finish_err)

    def ui_url(self, host: str = "http://127.0.0.1:5000") -> str:
        """The experiment's runs in the MLflow UI's model-training view, sorted by the sweep's metric
        (its ``metric`` and ``mode`` params), best first. MLflow 3.17's UI picks the view from the
        URL's ``workflowType`` (a bare experiment link lands in GenAI whatever the experiment's kind
        tag says); its runs page reads ``orderByKey`` and ``orderByAsc``."""
        from urllib.parse import quote

        params = self.client.get_run(self.run_id).data.params
        url = f"{host}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if metric := params.get("metric"):
            ascending = str(params.get("mode") == "min").lower()
            url += f"&orderByKey={quote(f'metrics.`{metric}`', safe='')}&orderByAsc={ascending}"
        return url


def start_parent(loaded: LoadedSpec, *, uri: str, run_name: str, storage_path: str, smoke: bool) -> ParentRun:
    """A new parent run for ``loaded``: the resolved spec as params, what produced it as tags,
    the spec files as artifacts."""
    spec = loaded.spec
    parent = ParentRun(uri, spec.tracking.experiment or spec.name)
    parent.start(run_name, spec_params(spec.model_dump(mode="json"), loaded.raw_space),
                 parent_tags(loaded, storage_path=f"{storage_path}/{run_name}", smoke=smoke))
    try:
        parent.log_spec_files(loaded)
    except BaseException as err:
        parent.fail(err)
        raise
    return parent


def parent_tags(loaded: LoadedSpec, *, storage_path: str, smoke: bool) -> dict[str, str]:
    """Tags saying what produced the sweep: trainable, searcher, scheduler, versions, git commit."""
    from importlib.metadata import version

    from tricksweep import __version__

    spec = loaded.spec
    tags = {
        SWEEP_TAG: "parent",
        "tricksweep.trainable": spec.trainable,
        "tricksweep.searcher": spec.searcher,
        "tricksweep.repeats": str(spec.repeats),
        "tricksweep.scheduler": spec.scheduler.type,
        "tricksweep.storage_path": storage_path,
        "tricksweep.spec_file": str(loaded.path.resolve()) if loaded.path is not None else "(a dict)",
        CODE_PATHS_TAG: os.pathsep.join(loaded.code_paths),
        "tricksweep.smoke": str(smoke).lower(),
        "tricksweep.version": __version__,
        "tricksweep.versions": ", ".join(f"{name} {version(name)}" for name in ("ray", "torch", "mlflow")),
    }
    if sha := git_sha(loaded.path.resolve().parent if loaded.path is not None else Path.cwd()):
        tags["mlflow.source.git.commit"] = sha
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    return tags


def spec_params(spec_dump: dict, raw_space: dict) -> dict[str, Any]:
    """The resolved spec as flat params; each space entry is logged as its DSL text."""
    params = flatten({k: v for k, v in spec_dump.items() if k not in ("space", "include")})
    params.update(_space_params(raw_space, "space."))
    return params


def _space_params(raw: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and not is_domain(value):
            out.update(_space_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return out


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def param_value(value: Any) -> str:
    """A param as MLflow stores it: a string, cut to MLflow's limit, with no password in it."""
    # A URI's user:password (e.g. a tracking or storage URI in the spec) never becomes a param.
    text = _USERINFO.sub("***@", "null" if value is None else str(value))
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def trial_name(trial_id: str) -> str:
    """``"a1b2c_00003"`` -> ``"trial-00003"``: the run name in MLflow and on the console."""
    return f"trial-{trial_id.rsplit('_', 1)[-1]}"

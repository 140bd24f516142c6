"""The background MLflow writer: operations on child runs, applied in order on their own thread,
retried while the tracking server is away, and batched (``log_batch``).

    writer = Writer(uri, experiment_id, parent_run_id, resumed=False)
    writer.submit(StartRun("a1_00000", "trial-00000", {"lr": 0.1}, {}))
    writer.submit(LogMetrics("a1_00000", [Metric("val_accuracy", 0.9, stamp_ms, 1)]))
    writer.submit(EndRun("a1_00000", "FINISHED"))
    writer.close(timeout=120)

No Ray here: the Tune callback that feeds it lives in ``callbacks.py``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tricksweep.tracking import ERROR_TAG, PARENT_TAG, RESUMED_TAG, TRIAL_TAG, param_value

log = logging.getLogger(__name__)

BATCH_LIMIT = 900  # metrics + tags in one log_batch (MLflow allows 1000 entries)


@dataclass(frozen=True)
class StartRun:
    """Create (or, in a resumed sweep, find again) the trial's child run."""

    trial_id: str
    run_name: str
    params: dict[str, Any]
    tags: dict[str, str]


@dataclass(frozen=True)
class LogMetrics:
    trial_id: str
    points: list  # mlflow.entities.Metric, step = epoch

    @property
    def size(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class SetTags:
    trial_id: str
    tags: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.tags)


@dataclass(frozen=True)
class EndRun:
    trial_id: str
    status: str  # MLflow's run status: FINISHED, FAILED, KILLED


Op = StartRun | LogMetrics | SetTags | EndRun
Batchable = (LogMetrics, SetTags)  # ops of one trial that may share one log_batch


class Writer:
    """Applies MLflow operations in submission order per trial, on its own thread, retrying until
    they land.

    Few calls per trial: the run is created with its tags; its params ride with its first metrics;
    queued metrics and tags of one trial share one ``log_batch``; and an op that arrives on an
    empty queue lingers ``linger_s`` for company, so short epochs cost one call per trial per
    linger rather than one per epoch (each call is a sqlite transaction or an HTTP request). On
    the 16 x 10 digits benchmark sweep: 208 calls without lingering, 92 at 0.5 s, 59 at 2 s, and
    the writer's CPU time 1.46 s, 0.63 s, 0.41 s (on 2 CPUs it is taken from the trials).

    Memory stays bounded: past ``max_points`` queued metric points the oldest points are dropped
    (and counted) rather than the process growing without end during a long outage.
    """

    SCAN = 256  # queued ops looked through for one trial's company: bounds the cost of a backlog

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, resumed: bool,
                 max_points: int = 500_000, linger_s: float = 2.0):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.resumed = resumed  # a restored sweep: runs found again are continuations, not retries
        self.max_points = max_points
        self.linger_s = linger_s
        self.run_ids: dict[str, str] = {}
        self.recorded_until: dict[str, int] = {}  # resumed trials: last epoch already in MLflow
        self.dropped_points = 0
        self.written_points = 0
        self.retries = 0
        self.calls = 0  # MLflow calls made: what the batching saves
        self._params: dict[str, list] = {}  # per trial: params not yet written
        self._start_tried: set[str] = set()  # a start retried after an error may have created its run
        self._ops: collections.deque[Op] = collections.deque()
        self._points = 0
        self._queued_since = 0.0
        self._cv = threading.Condition()
        self._closing = False
        self._abandoned = False  # close() gave up waiting: drop whatever is still in flight
        self._in_flight = 0
        self._thread = threading.Thread(target=self._loop, name="tricksweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> None:
        with self._cv:
            if isinstance(op, LogMetrics):
                self._points += op.size
                while self._points > self.max_points and self._drop_oldest_metrics():
                    pass
            if not self._ops:
                self._queued_since = time.monotonic()
            self._ops.append(op)
            self._cv.notify()

    def _drop_oldest_metrics(self) -> bool:
        for i, queued in enumerate(self._ops):
            if isinstance(queued, LogMetrics):
                del self._ops[i]
                self._points -= queued.size
                self.dropped_points += queued.size
                return True
        return False

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the queue to drain; returns operations left unwritten."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
        with self._cv:
            self._abandoned = True
            left = len(self._ops) + self._in_flight
            self._ops.clear()
            self._cv.notify()
        return left

    def _loop(self) -> None:
        delay = 0.5
        while True:
            with self._cv:
                while not self._ops and not self._closing:
                    self._cv.wait()
                # A fresh op waits for company; a backlog (older ops) is written at once.
                while (self._ops and not self._closing
                       and (left := self._queued_since + self.linger_s - time.monotonic()) > 0):
                    self._cv.wait(left)
                if not self._ops or self._abandoned:
                    return
                batch = self._take()
                self._in_flight = 1
            try:
                self._apply(batch)
            except Exception as err:  # noqa: BLE001 - any failure: keep the data, retry later
                if not _is_transient(err):
                    log.warning("MLflow rejected %s for trial %s: %s", type(batch[0]).__name__, batch[0].trial_id, err)
                else:
                    self.retries += 1
                    with self._cv:
                        self._in_flight = 0
                        if self._abandoned:
                            return
                        self._ops.extendleft(reversed(batch))
                        self._points += sum(op.size for op in batch if isinstance(op, LogMetrics))
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            with self._cv:
                self._in_flight = 0
            delay = 0.5

    def _take(self) -> list[Op]:
        """Pop the next op; a metrics or tags op takes along the same trial's later metrics and tags
        ops (up to its next start or end, which must stay in order), within log_batch's limits."""
        first = self._ops.popleft()
        batch = [first]
        if isinstance(first, LogMetrics):
            self._points -= first.size
        if not isinstance(first, Batchable):
            return batch
        size = first.size
        i = 0
        while i < min(len(self._ops), self.SCAN):
            op = self._ops[i]
            if op.trial_id != first.trial_id:
                i += 1
                continue
            if not isinstance(op, Batchable) or size + op.size > BATCH_LIMIT:
                break
            del self._ops[i]
            if isinstance(op, LogMetrics):
                self._points -= op.size
            size += op.size
            batch.append(op)
        return batch

    def _apply(self, batch: list[Op]) -> None:
        first = batch[0]
        if isinstance(first, StartRun):
            self._start(first)
            return
        run_id = self.run_ids.get(first.trial_id)
        if run_id is None:
            return  # its start was rejected; nothing to attach to
        if isinstance(first, EndRun):
            while self._params.get(first.trial_id):
                self._log(run_id, first.trial_id)
            self.client.set_terminated(run_id, first.status)
            self.calls += 1
            return
        from mlflow.entities import RunTag

        floor = self.recorded_until.get(first.trial_id, 0)
        points = [m for op in batch if isinstance(op, LogMetrics) for m in op.points if m.step > floor]
        tags = [RunTag(k, str(v)) for op in batch if isinstance(op, SetTags) for k, v in op.tags.items()]
        self._log(run_id, first.trial_id, points, tags)
        self.written_points += len(points)

    def _log(self, run_id: str, trial_id: str, metrics: list | None = None, tags: list | None = None) -> None:
        """One log_batch: these metrics and tags plus up to 100 of the trial's unwritten params."""
        params = self._params.get(trial_id, [])[:100]
        if metrics or tags or params:
            self.client.log_batch(run_id, metrics=metrics or [], params=params, tags=tags or [])
            self.calls += 1
        if params:
            self._params[trial_id] = self._params[trial_id][len(params):]

    def _start(self, op: StartRun) -> None:
        from mlflow.entities import Param

        if op.trial_id not in self.run_ids:
            self.run_ids[op.trial_id] = self._find_or_create(op)
        # Written with the first metrics; a trial started again (a retry) logs the same values again.
        self._params[op.trial_id] = [Param(k, param_value(v)) for k, v in op.params.items()]

    def _find_or_create(self, op: StartRun) -> str:
        # A restored sweep finds its trials' runs again through the trial-id tag: no duplicates.
        # So does a start retried after an error, which may have created the run before failing.
        trial_id = op.trial_id
        if self.resumed or trial_id in self._start_tried:
            existing = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
                max_results=1,
            )
            self.calls += 1
            if existing:
                run_id = existing[0].info.run_id
                # Epochs repeated after a restore from an older checkpoint keep their first record.
                self.recorded_until[trial_id] = max(
                    (m.step for key in existing[0].data.metrics for m in self.client.get_metric_history(run_id, key)),
                    default=0,
                )
                if self.resumed:
                    self.client.update_run(run_id, status="RUNNING")
                    self.client.set_tag(run_id, RESUMED_TAG, "true")
                    if ERROR_TAG in existing[0].data.tags:  # an errored trial runs again: the error is past
                        self.client.delete_tag(run_id, ERROR_TAG)
                return run_id
        self._start_tried.add(trial_id)
        run = self.client.create_run(
            self.experiment_id, run_name=op.run_name,
            tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, **op.tags},
        )
        self.calls += 1
        return run.info.run_id


def _is_transient(err: Exception) -> bool:
    """Connection trouble and server-side errors may pass; MLflow's answers about the request
    itself (bad value, deleted run, no permission) will not change on retry."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return isinstance(err, (OSError, ConnectionError, TimeoutError)) or type(err).__module__.startswith(
        ("requests", "urllib3", "sqlalchemy")
    )

"""Tune callbacks on the driver: the MLflow child runs (``MlflowTrials``, through the background
``Writer``), the stop when the first trials all fail alike (``RepeatedErrors``) and the console
progress (``Progress``).

    tracker = MlflowTrials(uri, experiment_id, parent_run_id, max_epochs=30, asha=True, time_limit_s=None)
    errors = RepeatedErrors(3)
    tune.RunConfig(callbacks=[tracker, errors, Progress("val_accuracy", "max", tracker, errors, print)],
                   stop=errors.stopper())
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from tricksweep.gpu_shares import ran_out_of_memory
from tricksweep.records import INFEASIBLE
from tricksweep.space import flatten
from tricksweep.tracking import (
    ERROR_TAG,
    GPU_TAG,
    OOM_RETRIES_TAG,
    RESUMED_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    end_status,
    metric_points,
    trial_name,
)
from tricksweep.writer import EndRun, LogMetrics, SetTags, StartRun, Writer

log = logging.getLogger(__name__)


class MlflowTrials(tune.Callback):
    """Tune callback: a child run per trial with its active hyperparameters, per-epoch metrics
    (step = epoch) and a ``tricksweep.status`` tag saying how it ended. With ``oom_policy`` (the
    sweep asks for GPU memory), a trial that ran out of GPU memory on a whole GPU ends
    ``infeasible``, and each run counts its out-of-memory retries in ``tricksweep.oom_retries``."""

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        max_epochs: int,
        asha: bool,
        time_limit_s: float | None,
        flush_timeout_s: float = 120.0,
        oom_policy: bool = False,
    ):
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.asha = asha
        self.time_limit_s = time_limit_s
        self.flush_timeout_s = flush_timeout_s
        self.oom_policy = oom_policy
        self.oom_retries: dict[str, int] = {}
        self._gpu_tagged: set[str] = set()
        self.statuses: dict[str, str] = {}
        self.error_lines: list[str] = []  # failed trials' errors in this process, in order
        self.resumed = False  # set by resume_sweep on the callback it restores
        self.incomplete = False  # close() left ops unwritten or dropped points: backfill from Tune
        self._writer: Writer | None = None
        self._closed = False
        self._last_epoch: dict[str, int] = {}
        self._started: set[str] = set()  # trials Tune has started in this sweep, across resumes
        self._started_at = time.monotonic()
        self._elapsed_s = 0.0

    # Tune pickles the callback once, with the tuner; the writer thread cannot travel.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None}

    # What a restored sweep needs to know comes from Tune's experiment snapshots, taken every few
    # seconds: get_state is saved with each one and set_state receives the last on restore.
    def get_state(self) -> dict:
        return {
            # Tune's time budget survives a restore; so must our clock for `stopped_by_budget`.
            "elapsed_s": time.monotonic() - self._started_at,
            "statuses": dict(self.statuses),
            "last_epoch": dict(self._last_epoch),
            "started": sorted(self._started),
            "oom_retries": dict(self.oom_retries),
        }

    def set_state(self, state: dict) -> None:
        self._elapsed_s = state["elapsed_s"]
        self.statuses.clear()  # in place: others (Progress) hold this dict
        self.statuses.update(state["statuses"])
        self._last_epoch = dict(state["last_epoch"])
        self._started = set(state["started"])
        self.oom_retries = dict(state.get("oom_retries", {}))

    @property
    def started_trials(self) -> set[str]:
        return set(self._started)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the sweep began, across resumes (Tune's time budget clock)."""
        return time.monotonic() - self._started_at

    def status_of(self, trial: Any) -> str:
        """The word for where ``trial`` stands: its end status once it has one, else Tune's state
        (pending, running, paused); a trial Tune ended without telling its callbacks (an
        interrupted or stopped sweep, a restored one) gets the status its last result implies."""
        if trial.trial_id in self.statuses:
            return self.statuses[trial.trial_id]
        state = str(trial.status)
        if state == "ERROR":
            return "failed"
        if state == "TERMINATED":
            if "epoch" not in (trial.last_result or {}):
                return "not_started"
            return end_status(trial.last_result, max_epochs=self.max_epochs, asha=self.asha, out_of_time=False)[0]
        return state.lower()

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = Writer(self.uri, self.experiment_id, self.parent_run_id, self.resumed)
        return self._writer

    def setup(self, **info: Any) -> None:
        self._started_at = time.monotonic() - self._elapsed_s
        _ = self.writer

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = flatten(trial.config)
        tags = {SWEEP_TAG: "child"}
        if self.resumed and trial.trial_id in self._started:
            # Started before the driver died: a continuation, even when its run never reached MLflow.
            tags[RESUMED_TAG] = "true"
        self._started.add(trial.trial_id)
        self.writer.submit(StartRun(trial.trial_id, trial_name(trial.trial_id), params, tags))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if epoch <= self._last_epoch.get(trial.trial_id, 0):
            return  # an epoch repeated after a restore from an older checkpoint: already recorded
        self._last_epoch[trial.trial_id] = epoch
        self.writer.submit(LogMetrics(trial.trial_id, metric_points(result, epoch, int(time.time() * 1000))))
        if "gpu_index" in result and trial.trial_id not in self._gpu_tagged:
            # Which GPU it ran on, for the report's GPU timeline (a retry may move it: the first one is kept).
            self._gpu_tagged.add(trial.trial_id)
            gpu = f"{result.get('node_ip', '')}/{int(result['gpu_index'])}"
            self.writer.submit(SetTags(trial.trial_id, {GPU_TAG: gpu}))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        out_of_time = self.time_limit_s is not None and time.monotonic() - self._started_at >= self.time_limit_s
        status, tags = end_status(trial.last_result, max_epochs=self.max_epochs, asha=self.asha,
                                  out_of_time=out_of_time)
        self._finish(trial, status, tags, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tags = {"tricksweep.retries": str(trial.num_failures), STATUS_TAG: "retried"}
        if self.oom_policy and ran_out_of_memory(trial):
            self.oom_retries[trial.trial_id] = self.oom_retries.get(trial.trial_id, 0) + 1
            tags[OOM_RETRIES_TAG] = str(self.oom_retries[trial.trial_id])
        self.writer.submit(SetTags(trial.trial_id, tags))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self._started:
            # Tune errors some trials that never started: one whose actor failed to start, and
            # (Ray 2.60) one whose node died while a reused actor was being reset for it, whatever
            # max_failures says. The trial still gets its child run, to say so.
            self.on_trial_start(iteration, trials, trial)
        line = error_line(trial)
        if self.oom_policy and ran_out_of_memory(trial):
            # OOM retries stop at a whole GPU (gpu_shares.MemoryShares): the configuration does not fit.
            tags = {ERROR_TAG: line, OOM_RETRIES_TAG: str(self.oom_retries.get(trial.trial_id, 0))}
            self._finish(trial, INFEASIBLE, tags, "FAILED")
            return
        self.error_lines.append(line)
        self._finish(trial, "failed", {ERROR_TAG: line}, "FAILED")

    def _finish(self, trial: Any, status: str, tags: dict[str, str], run_status: str) -> None:
        self.statuses[trial.trial_id] = status
        self.writer.submit(SetTags(trial.trial_id, {STATUS_TAG: status, **tags}))
        self.writer.submit(EndRun(trial.trial_id, run_status))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Drain the writer (at most ``flush_timeout_s``); later calls do nothing."""
        if self._writer is None or self._closed:
            return
        self._closed = True
        left = self._writer.close(self.flush_timeout_s)
        self.incomplete = bool(left or self._writer.dropped_points)
        if self.incomplete:
            log.warning(
                "MLflow: %d operations not written after %.0f s, %d metric points dropped (queue bound)",
                left, self.flush_timeout_s, self._writer.dropped_points,
            )


_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*")
_FRAME_LINE = re.compile(r'^File "(?P<file>[^"]+)", line (?P<line>\d+)')


def error_line(trial: Any) -> str:
    """The trial's exception as one line (``RuntimeError: ...``): the last line naming an
    exception, since messages such as pydantic's end with a help link; then where in the user's
    code it was raised, ``(at train.py:12)``, when the traceback passes through it."""
    path = getattr(trial, "error_file", None)
    text = Path(path).read_text(errors="replace") if path and Path(path).exists() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    line = (named or lines or ["unknown error"])[-1]
    where = user_frame(lines)
    return (line[:500 - len(where) - 6] + f" (at {where})") if where else line[:500]


def user_frame(lines: list[str]) -> str | None:
    """``file:line`` of the innermost traceback frame in user code: not tricksweep's, not an
    installed package's (Ray, torch, pydantic), not the standard library's."""
    import sysconfig

    libraries = {sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")}
    not_user = tuple(str(Path(p).resolve()) for p in libraries)
    engine = str(Path(__file__).resolve().parent)
    frames = [m for m in map(_FRAME_LINE.match, lines) if m]
    for frame in reversed(frames):
        file = Path(frame["file"])
        # Imported code has absolute paths in a worker's traceback; "<string>" and the like are no file.
        if not file.is_absolute() or "site-packages" in file.parts:
            continue
        if str(file.resolve()).startswith((*not_user, engine)):
            continue
        try:
            shown = file.resolve().relative_to(Path.cwd())
        except ValueError:
            shown = file
        return f"{shown}:{frame['line']}"
    return None


class RepeatedErrors(tune.Callback):
    """Stops the sweep when the first ``limit`` trials to end all failed with the same error
    (its ``error_line``: exception type, last line and the user's file:line): a broken dataset
    or a bug in user code then costs ``limit`` trials, not all of them. Any other end first (a
    trial that finished, or a different error) turns the check off for the rest of the sweep.
    A trial whose data or weights files are unavailable (``FilesUnavailable``: on a cluster, a path
    only the driver can see) stops the sweep at once, whatever ended before: every trial placed
    where those files are missing would fail the same way. ``limit`` 0: never stop."""

    def __init__(self, limit: int, *, oom_policy: bool = False):
        self.limit = limit
        # With the OOM policy an out-of-memory end is a configuration too large (infeasible), not a
        # broken sweep: it neither counts toward the stop nor turns the check off.
        self.oom_policy = oom_policy
        self.armed = limit > 0  # still watching: every trial that ended so far failed alike
        self.failures: list[tuple[str, str]] = []  # (trial name, error line) while armed
        self.stop_line: str | None = None  # the error that stopped the sweep

    # Saved with Tune's snapshots: a check the sweep already turned off stays off when it is
    # resumed after an interruption. After a stop for errors, `tricksweep resume` (the error
    # fixed, presumably) starts the check afresh.
    def get_state(self) -> dict:
        return {"armed": self.armed, "failures": list(self.failures), "stopped": self.stop_line is not None}

    def set_state(self, state: dict) -> None:
        if not state["stopped"]:
            self.armed = state["armed"] and self.limit > 0
            self.failures = [tuple(f) for f in state["failures"]]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.armed = False

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if getattr(self, "oom_policy", False) and ran_out_of_memory(trial):  # getattr: sweeps pickled before it
            return
        line = error_line(trial) if self.armed or self.limit > 0 else ""
        if self.limit > 0 and self.stop_line is None and _files_unavailable(line):
            self.failures, self.armed, self.stop_line = [(trial_name(trial.trial_id), line)], False, line
            return
        if not self.armed:
            return
        if self.failures and line != self.failures[0][1]:
            self.armed = False
            return
        self.failures.append((trial_name(trial.trial_id), line))
        if len(self.failures) >= self.limit:
            self.armed = False
            self.stop_line = line

    @property
    def message(self) -> str | None:
        """One line saying why the sweep stopped, or None when it did not stop for errors."""
        if self.stop_line is None:
            return None
        if _files_unavailable(self.stop_line):
            return f"{self.failures[0][0]} could not read its files: {self.stop_line}"
        return f"the first {len(self.failures)} trials all failed with the same error: {self.stop_line}"

    def stopper(self) -> tune.Stopper:
        """The Tune stopper that ends the sweep (no new trials, running ones stopped) once this
        callback has seen enough."""
        return _StopWhenRepeated(self)


def _files_unavailable(line: str) -> bool:
    """Whether an error line is trainables.data.FilesUnavailable (named with or without its module)."""
    return line.split(":", 1)[0].rsplit(".", 1)[-1] == "FilesUnavailable"


class _StopWhenRepeated(tune.Stopper):
    def __init__(self, errors: RepeatedErrors):
        self.errors = errors

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.errors.stop_line is not None


class Progress(tune.Callback):
    """Live progress on the console: a line per finished trial, a summary every few seconds.

    A failure is shown with its error once; a trial failing with the error shown last says
    "the same error". While ``errors`` may still stop the sweep, failures are held back: if it
    stops, its one message replaces them; otherwise they are shown at the next other end."""

    def __init__(self, metric: str, mode: str, tracker: MlflowTrials, errors: RepeatedErrors | None,
                 echo: Callable[[str], None], every_s: float = 10.0):
        self.metric, self.mode, self.tracker, self.errors, self.echo = metric, mode, tracker, errors, echo
        self.every_s = every_s
        self.best: tuple[float, str, int] | None = None
        self._started = time.monotonic()
        self._last = 0.0
        self._held: list[tuple[str, str]] = []  # (trial name, error line) not shown yet
        self._last_error: tuple[str, str] | None = None  # (trial name, error line) last shown

    def __getstate__(self) -> dict:
        return {**self.__dict__, "echo": print}

    def setup(self, **info: Any) -> None:
        self._started = time.monotonic()  # the clock of this process's lines (a resumed one starts at 0:00)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial_name(trial.trial_id), int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show_held()
        last = trial.last_result or {}
        status = self.tracker.status_of(trial).replace("_", " ")
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        self.echo(f"  {trial_name(trial.trial_id)} {status} at epoch {last.get('epoch', 0)}: {self.metric} {shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # RepeatedErrors comes before this callback: it has already counted this failure.
        if self.errors is not None and self.errors.stop_line is not None:
            self._held.clear()  # the sweep stops: its message says it once
            return
        failure = (trial_name(trial.trial_id), error_line(trial))
        if self.tracker.statuses.get(trial.trial_id) == INFEASIBLE:
            self._show_held()
            self.echo(f"  {failure[0]} infeasible: out of GPU memory on a whole GPU ({failure[1][:120]})")
            return
        if self.errors is not None and self.errors.armed:
            self._held.append(failure)
            return
        self._show_held()
        self._show(*failure)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.errors is None or self.errors.stop_line is None:
            self._show_held()  # the sweep ended before the check could decide

    def _show_held(self) -> None:
        held, self._held = self._held, []
        for failure in held:
            self._show(*failure)

    def _show(self, name: str, line: str) -> None:
        if self._last_error is not None and self._last_error[1] == line:
            self.echo(f"  {name} failed: the same error as {self._last_error[0]}")
            return
        self._last_error = (name, line)
        self.echo(f"  {name} failed: {line}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        counts: dict[str, int] = {}
        for t in trials:
            state = self.tracker.status_of(t)
            counts[state] = counts.get(state, 0) + 1
        parts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
        best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]}, epoch {self.best[2]})" if self.best else ""
        elapsed = int(now - self._started)
        self.echo(f"[{elapsed // 60}:{elapsed % 60:02d}] {len(trials)} trials: {parts}{best}")

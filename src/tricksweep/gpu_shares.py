"""The out-of-memory policy on the driver: ``MemoryShares`` wraps the sweep's scheduler (ASHA or
FIFO), sizes each trial's GPU memory share and doubles it after a CUDA out-of-memory error (see
``gpu.py`` for the rules). Driver side: imports Ray Tune.

    scheduler = MemoryShares(ASHAScheduler(...), DeviceLayout.from_cluster(), request_mib=None,
                             cpus=1, custom={}, max_failures=0)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import TrialScheduler

from tricksweep.gpu import RESOURCE, DeviceLayout, is_out_of_memory, need_from_peak, shape_key


def share_of(trial: Any) -> int:
    """The MiB a trial's resources ask for now."""
    return int(trial.placement_group_factory.required_resources.get(RESOURCE, 0))


def ran_out_of_memory(trial: Any) -> bool:
    """Whether the trial's error was CUDA running out of memory: the one verdict the scheduler
    (grow the share) and the callbacks (retry, infeasible, not a repeated error) both act on.
    Read from the whole traceback Tune saved, not its one-line summary: an OOM re-raised as
    another exception still names CUDA's message in it."""
    path = getattr(trial, "error_file", None)
    try:
        text = open(path, errors="replace").read() if path else ""
    except OSError:
        text = ""
    return is_out_of_memory(text)


class MemoryShares(TrialScheduler):
    """The sweep's scheduler (``base``) with GPU memory shares: sized at start (``request_mib``, or
    measured per shape with ``request_mib=None``: auto) and doubled after an out-of-memory error."""

    def __init__(self, base: TrialScheduler, layout: DeviceLayout, *, request_mib: int | None, cpus: float,
                 custom: dict[str, float], max_failures: int):
        super().__init__()
        self.base = base
        self.layout = layout
        self.request_mib = request_mib
        self.cpus = cpus
        self.custom = dict(custom)
        self.max_failures = max_failures
        self.oom_retries: dict[str, int] = {}
        self.needs: dict[str, int] = {}  # auto: shape -> MiB measured (or grown by an OOM)
        self._sized: set[str] = set()
        # Told each trial that ends out of memory on a whole GPU, before the searcher hears of its end
        # (Tune calls the scheduler's on_trial_error first): the searcher's mark_infeasible.
        self.infeasible_listener: Callable[[str], None] | None = None

    @property
    def metric(self) -> str | None:
        return self.base.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.base.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.base.set_search_properties(metric, mode, **spec)

    def _resize(self, trial: Any, mib: int) -> None:
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        trial.update_resources(PlacementGroupFactory([self.layout.share(mib, cpus=self.cpus, custom=self.custom)]))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id not in self._sized:
            self._sized.add(trial.trial_id)
            need = self.request_mib or self.needs.get(shape_key(trial.config), self.layout.device_mib)
            if need != share_of(trial):
                self._resize(trial, need)
        # Tune decides on a retry before any scheduler hears of the error: while the share can
        # still grow, one failure more than max_failures is allowed, and each OOM retry adds one.
        if self.max_failures >= 0:
            growable = share_of(trial) < self.layout.device_mib
            trial.max_failures = self.max_failures + self.oom_retries.get(trial.trial_id, 0) + int(growable)
        self.base.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        from ray.tune.experiment import Trial

        # ERROR here: Tune stopped it and will requeue it (a retry); RUNNING: it is ending for good.
        if ran_out_of_memory(trial):
            share = share_of(trial)
            if trial.status == Trial.ERROR and share < self.layout.device_mib:
                grown = min(self.layout.device_mib, 2 * share)
                self.oom_retries[trial.trial_id] = self.oom_retries.get(trial.trial_id, 0) + 1
                self._resize(trial, grown)
                if self.request_mib is None:
                    key = shape_key(trial.config)
                    self.needs[key] = max(self.needs.get(key, 0), grown)
            elif share >= self.layout.device_mib and self.infeasible_listener is not None:
                self.infeasible_listener(trial.trial_id)
        self.base.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        peak = result.get("gpu_memory_peak_mib")
        if self.request_mib is None and isinstance(peak, (int, float)):
            key = shape_key(trial.config)
            self.needs[key] = max(self.needs.get(key, 0), need_from_peak(peak))
        return self.base.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.base.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.base.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.base.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"(GPU memory shares) {self.base.debug_string()}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump({k: v for k, v in self.__dict__.items() if k != "infeasible_listener"}, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as saved:
            self.__dict__.update(pickle.load(saved))

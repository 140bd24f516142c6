"""The search algorithms behind the registry's entries (``search.py``): random and grid (Ray's
variant generator), and Optuna's TPE through Ray's ``OptunaSearch`` over the DSL as a
define-by-run function; repeats and the epoch budget. Driver side: imports Ray.

    search_alg, num_samples, param_space = search.build(loaded.space, spec)

**Repeats.** ``repeats: N`` runs every sampled configuration with the same N seeds
(:func:`repeat_seeds`, drawn from the sweep's seed: every configuration sees the same seeds, so
comparisons between configurations are paired). Grid sweeps get the seeds as one more grid
axis; random and TPE sweeps sample a configuration once through Optuna (``RandomSampler`` or
``TPESampler``, seeded) and hand it out N times.

**ASHA and TPE.** Ray's ``OptunaSearch`` would tell Optuna that an ASHA-stopped trial is
*complete*, with its metric at a partial budget, as if it had trained for the full budget. We
tell Optuna only once all repeats of a configuration ended, and decide on purpose:

- every repeat ran its full budget, or stopped itself early (patience): ``COMPLETE`` with the
  mean over repeats of each trial's best value (the leaderboard's ranking value);
- any repeat stopped by ASHA, diverged, or cut by the time budget: ``PRUNED``, after reporting
  the mean running-best metric per epoch as intermediate values up to the last epoch all its
  repeats reached. Optuna's TPE ranks pruned trials below every completed one, and among
  themselves by how far they got, then by their value there: ASHA's verdict is kept;
- any repeat failed (an error): ``FAIL`` (TPE ignores it).

**Reproducibility.** Every sampler is seeded by the sweep's ``seed``: random and grid sweeps
repeat exactly; TPE's first ``n_startup_trials`` (random) suggestions repeat exactly, and later
ones depend on the order results arrive in, which is exact with ``max_concurrent_trials: 1``.

**Epoch budget.** ``budget.max_total_epochs`` counts every epoch any trial reported; once spent
the searcher hands out no new trial (running trials finish, so the total may exceed it by what
they use). ``budget.time_limit_s`` is Tune's ``time_budget_s``.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from tricksweep import space as dsl

SEED_RANGE = 2**31 - 1
TPE_STARTUP_TRIALS = 8


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds every configuration runs with when ``repeats > 1`` (the same for all)."""
    rng = random.Random(seed)
    return [rng.randrange(SEED_RANGE) for _ in range(repeats)]


class _EpochCounter:
    """Counts the epochs trials report (once each, also across restores)."""

    def _count(self, trial_id: str, result: dict) -> None:
        epoch = int(result.get("epoch") or 0)
        last = self._last_epoch.get(trial_id, 0)
        if epoch > last:
            self.epochs_used += epoch - last
            self._last_epoch[trial_id] = epoch

    def budget_spent(self) -> bool:
        return self.max_total_epochs is not None and self.epochs_used >= self.max_total_epochs


class BudgetedVariants(_EpochCounter, BasicVariantGenerator):
    """Ray's random/grid variant generator that stops creating trials once the epoch budget is spent."""

    def __init__(self, *, max_total_epochs: int | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_total_epochs = max_total_epochs
        self.epochs_used = 0
        self._last_epoch: dict[str, int] = {}

    def next_trial(self) -> Any:
        if self.budget_spent():
            self.set_finished()
            return None
        return super().next_trial()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._count(trial_id, result)


@dataclass
class _Group:
    """One sampled configuration and the trials running it with each seed."""

    config: dict
    trials: list[str] = field(default_factory=list)
    handed_out: int = 0
    results: dict[str, dict] = field(default_factory=dict)  # trial -> last result
    errors: set[str] = field(default_factory=set)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # trial -> epoch -> metric


class OptunaRepeats(_EpochCounter, Searcher):
    """Samples configurations with Ray's ``OptunaSearch`` over ``DefineByRun(space)`` and runs each
    with every repeat seed; tells Optuna the outcome per configuration (see the module doc)."""

    def __init__(
        self, space: dsl.Node, *, sampler: str, seed: int, seeds: list[int] | None, max_epochs: int,
        max_total_epochs: int | None,
    ):
        super().__init__()
        self.space = space
        self.sampler_name = sampler
        self.seed = seed
        self.seeds = seeds  # None: one trial per configuration with a seed drawn from the sweep's generator
        self.max_epochs = max_epochs
        self.max_total_epochs = max_total_epochs
        self.epochs_used = 0
        self._last_epoch: dict[str, int] = {}
        self._rng = random.Random(seed)
        self.inner: Any = None  # OptunaSearch, made once Tune sets metric and mode
        self.groups: dict[str, _Group] = {}
        self.group_of: dict[str, str] = {}
        self.told: dict[str, str] = {}  # group -> Optuna state told

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        if self.inner is not None:
            return True
        self._metric, self._mode = metric, mode
        sampler = (
            optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=TPE_STARTUP_TRIALS)
            if self.sampler_name == "tpe" else optuna.samplers.RandomSampler(seed=self.seed)
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.inner = OptunaSearch(space=dsl.DefineByRun(self.space), metric=metric, mode=mode, sampler=sampler)
        return True

    @property
    def repeats(self) -> int:
        return len(self.seeds) if self.seeds else 1

    def suggest(self, trial_id: str) -> dict | None:
        if self.budget_spent():
            return Searcher.FINISHED
        group_id = next((g for g, grp in self.groups.items() if grp.handed_out < self.repeats), None)
        if group_id is None:
            group_id = f"config-{len(self.groups):05d}"
            suggested = self.inner.suggest(group_id)
            # OptunaSearch merges the flat Optuna parameter names into what DefineByRun returned: keep the config.
            config = {k: v for k, v in suggested.items() if k in self.space}
            self.groups[group_id] = _Group(config)
        group = self.groups[group_id]
        seed = self.seeds[group.handed_out] if self.seeds else self._rng.randrange(SEED_RANGE)
        group.handed_out += 1
        group.trials.append(trial_id)
        self.group_of[trial_id] = group_id
        return {**copy.deepcopy(group.config), "seed": seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._count(trial_id, result)
        group = self.groups.get(self.group_of.get(trial_id, ""))
        value = result.get(self.metric)
        if group is not None and isinstance(value, (int, float)) and value == value:
            group.curves.setdefault(trial_id, {})[int(result.get("epoch") or 0)] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group_id = self.group_of.get(trial_id)
        if group_id is None or group_id in self.told:
            return
        group = self.groups[group_id]
        group.results[trial_id] = dict(result or {})
        if error:
            group.errors.add(trial_id)
        if len(group.results) == self.repeats:
            self._tell(group_id, group)

    def _tell(self, group_id: str, group: _Group) -> None:
        if group.errors:
            self.inner.on_trial_complete(group_id, None, error=True)
            self.told[group_id] = "FAIL"
            return
        best = max if self.mode == "max" else min
        running = {t: _running_best(group.curves.get(t, {}), best) for t in group.trials}
        full = all(
            int(r.get("epoch") or 0) >= self.max_epochs or r.get("end") == "early_stopped"
            for r in group.results.values()
        )
        if full and all(running.values()):
            values = [best(curve.values()) for curve in running.values()]
            self.inner.on_trial_complete(group_id, {self.metric: sum(values) / len(values)})
            self.told[group_id] = "COMPLETE"
            return
        # Pruned: intermediate values up to the last epoch every repeat reached, then no final value.
        reached = min((max(c) for c in running.values() if c), default=0)
        for epoch in range(1, reached + 1):
            points = [c[epoch] for c in running.values() if epoch in c]
            if points:
                self.inner.on_trial_result(group_id,
                                           {self.metric: sum(points) / len(points), "training_iteration": epoch})
        self.inner.on_trial_complete(group_id, None)
        self.told[group_id] = "PRUNED"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _running_best(curve: dict[int, float], best: Any) -> dict[int, float]:
    out: dict[int, float] = {}
    current = None
    for epoch in sorted(curve):
        current = curve[epoch] if current is None else best(current, curve[epoch])
        out[epoch] = current
    return out


def build_random(space: dsl.Node, spec: Any) -> tuple[Any, int, dict[str, Any]]:
    """Ray's variant generator over the space ({grid: ...} values enumerated); with repeats, one
    Optuna random sample per configuration, run with every repeat seed."""
    if spec.repeats > 1:
        return _optuna(space, spec, "random")
    return _variants(space, spec, enumerate_ranges=False)


def build_grid(space: dsl.Node, spec: Any) -> tuple[Any, int, dict[str, Any]]:
    """Every choice and int range enumerated; repeats become one more grid axis of seeds."""
    return _variants(space, spec, enumerate_ranges=True)


def build_optuna_tpe(space: dsl.Node, spec: Any) -> tuple[Any, int, dict[str, Any]]:
    return _optuna(space, spec, "tpe")


def _optuna(space: dsl.Node, spec: Any, sampler: str) -> tuple[Any, int, dict[str, Any]]:
    seeds = repeat_seeds(spec.seed, spec.repeats) if spec.repeats > 1 else None
    searcher = OptunaRepeats(
        space, sampler=sampler, seed=spec.seed, seeds=seeds, max_epochs=spec.budget.max_epochs,
        max_total_epochs=spec.budget.max_total_epochs,
    )
    # Tune hands metric and mode to a searcher only with a non-empty param_space; every
    # suggestion carries its own seed, which replaces this placeholder.
    return searcher, spec.budget.trials * spec.repeats, {"seed": 0}


def _variants(space: dsl.Node, spec: Any, enumerate_ranges: bool) -> tuple[Any, int, dict[str, Any]]:
    from ray import tune

    compiled = dsl.to_tune(space, enumerate_ranges=enumerate_ranges)
    if "seed" not in compiled:
        # Every trial draws its own seed from the sweep's seeded generator (or runs each repeat seed).
        seeds = repeat_seeds(spec.seed, spec.repeats) if spec.repeats > 1 else None
        compiled["seed"] = tune.grid_search(seeds) if seeds else tune.randint(0, SEED_RANGE)
    # Tune applies max_concurrent_trials only to a Searcher: the variant generator takes its own.
    variants = BudgetedVariants(random_state=spec.seed, max_total_epochs=spec.budget.max_total_epochs,
                                max_concurrent=spec.max_concurrent_trials or 0)
    return variants, spec.budget.trials, compiled


@contextmanager
def pending_trials_limit(spec: Any) -> Iterator[None]:
    """With an epoch budget, Tune must not queue trials ahead (Ray's variant generator queues up to
    200): at most ``max_concurrent_trials`` (default 1) wait, so few start after the budget is spent."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if spec.budget.max_total_epochs is None or key in os.environ:
        yield
        return
    os.environ[key] = str(spec.max_concurrent_trials or 1)
    try:
        yield
    finally:
        os.environ.pop(key, None)

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
- any repeat failed (an error): ``FAIL`` (TPE ignores it);
- any repeat out of GPU memory on a whole GPU (``resources.gpu_memory``, told by
  ``gpu_shares.MemoryShares`` through ``mark_infeasible``): ``PRUNED`` with a violated constraint
  (``Trial.set_constraint``). TPE sorts such trials into its "bad" group whatever their value,
  so it stops proposing their neighbours; a plain ``FAIL`` would leave TPE blind to them.

**Reproducibility.** Every sampler is seeded by the sweep's ``seed``: random and grid sweeps
repeat exactly; TPE's first ``n_startup_trials`` (random) suggestions repeat exactly, and later
ones depend on the order results arrive in, which is exact with ``max_concurrent_trials: 1``.

**Extending a sweep** (``tricksweep extend``, ``History``). The searcher is handed the lineage's
configurations and how they did. TPE is *told* them before its first suggestion: each earlier
configuration whose values lie in the (possibly widened) space is added to the Optuna study as a
finished trial (``study.add_trial``), with the state the rule above gives it under the new epoch
budget, so TPE's model is fitted on them from its first suggestion (Ray's ``evaluated_rewards``
and ``add_evaluated_point`` refuse a define-by-run space). No searcher hands out a configuration
already run in the lineage (:func:`config_key`: every parameter but the seed, as MLflow records
it); random draws start from a new seed (``History.sampler_seed``), so they and the trials' seeds
differ from the earlier runs'; grid runs only the points not run yet.

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
from tricksweep.records import parse_param
from tricksweep.tracking import param_value

SEED_RANGE = 2**31 - 1
TPE_STARTUP_TRIALS = 8
MAX_DRAWS_PER_SUGGESTION = 200  # draws of configurations already run before a searcher gives up
PRIOR_ATTR = "tricksweep.prior"  # on a study trial told from the lineage: the earlier trial it stands for


def config_key(config: dict) -> tuple:
    """What makes two trials the same configuration: every flattened parameter but the seed, each
    as its MLflow param text read back (``records.parse_param``) and written again, so a config
    Tune sampled compares equal to the same one read back from MLflow.

    >>> config_key({"optimizer": {"lr": 0.1}, "seed": 3}) == config_key({"optimizer": {"lr": 0.1}, "seed": 4})
    True
    """
    return tuple(sorted((k, param_value(parse_param(param_value(v)))) for k, v in dsl.flatten(config).items()
                        if k != "seed"))


@dataclass
class Prior:
    """An earlier configuration of the lineage as TPE is told it (see the module doc)."""

    config: dict  # nested, as sampled, without the seed
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None  # COMPLETE: the mean over repeats of each trial's best value
    curve: dict[int, float]  # PRUNED: the mean running-best metric per epoch, as intermediate values
    source: str  # the earlier trial (or trials) it stands for


@dataclass
class History:
    """What ``tricksweep extend`` hands its searcher: the configurations the lineage ran, how
    they did, and a seed for new draws."""

    ran: set[tuple]  # config_key of every configuration run in the lineage
    priors: list[Prior]  # what TPE is told
    sampler_seed: int  # random draws, TPE's sampler and the trials' seeds start from it


def prior(config: dict, results: list[tuple[str, dict[int, float]]], *, mode: str, max_epochs: int,
          source: str) -> Prior:
    """An earlier configuration's ``Prior`` from its trials' ``(status, metric per epoch)``, by the
    rule ``OptunaRepeats`` tells a configuration with, under the new ``max_epochs``."""
    best = max if mode == "max" else min
    if not results or any(status == "failed" or not curve for status, curve in results):
        return Prior(config, "FAIL", None, {}, source)
    running = [_running_best(curve, best) for _, curve in results]
    full = all(max(curve) >= max_epochs or status == "early_stopped" for status, curve in results)
    if full:
        values = [best(curve.values()) for curve in running]
        return Prior(config, "COMPLETE", sum(values) / len(values), {}, source)
    reached = min(max(curve) for curve in running)
    points = {e: [c[e] for c in running if e in c] for e in range(1, reached + 1)}
    return Prior(config, "PRUNED", None, {e: sum(p) / len(p) for e, p in points.items() if p}, source)


class _Outside(Exception):
    """A configuration with a value the space cannot give."""


def optuna_point(space: dsl.Node, config: dict) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The Optuna params and distributions under which ``DefineByRun(space)`` would have produced
    ``config`` (None when it cannot: a value outside a range, an option or a constant that is not
    in the space). What a told trial needs: the same names and distributions as a new one.

    >>> optuna_point(dsl.parse({"lr": {"loguniform": [1e-4, 1e-1]}, "width": 8}), {"lr": 0.01, "width": 8})[0]
    {'lr': 0.01}
    """
    params: dict[str, Any] = {}
    distributions: dict[str, Any] = {}
    try:
        _point(space, config, "", params, distributions)
    except _Outside:
        return None
    return params, distributions


def _point(node: dsl.Node, value: Any, path: str, params: dict, distributions: dict) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(node, dict):
        if not isinstance(value, dict) or not set(node) <= set(value):
            raise _Outside
        for key, child in node.items():
            _point(child, value[key], f"{path}.{key}" if path else key, params, distributions)
    elif isinstance(node, dsl.Const):
        if param_value(value) != param_value(node.value):
            raise _Outside
    elif isinstance(node, dsl.Choice):
        labels = dsl.option_labels(node)
        for label, option in zip(labels, node.options, strict=True):
            inner_params: dict = {}
            inner_distributions: dict = {}
            try:
                _point(option, value, f"{path}[{label}]", inner_params, inner_distributions)
            except _Outside:
                continue
            params.update(inner_params)
            distributions.update(inner_distributions)
            if len(labels) > 1:
                params[path] = label
                distributions[path] = CategoricalDistribution(labels)
            return
        raise _Outside
    else:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not node.low <= value <= node.high or (isinstance(node, dsl.IntRange) and value != int(value)):
            raise _Outside
        if node.high > node.low:
            params[path] = int(value) if isinstance(node, dsl.IntRange) else float(value)
            distributions[path] = (IntDistribution(node.low, node.high) if isinstance(node, dsl.IntRange)
                                   else FloatDistribution(node.low, node.high, log=node.log))


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
    """Ray's random/grid variant generator that stops creating trials once the epoch budget is spent.

    Extending a sweep: ``ran`` holds the configurations already run (``config_key``); a variant
    among them is dropped and the next one drawn. ``wanted``: hand out that many trials, each a
    configuration not run before (random: Tune is asked for more samples than that); without it
    (grid) every point not run yet is handed out, ``budget.trials`` times."""

    def __init__(self, *, max_total_epochs: int | None, ran: set[tuple] | None = None, wanted: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.max_total_epochs = max_total_epochs
        self.epochs_used = 0
        self._last_epoch: dict[str, int] = {}
        self.ran = ran
        self.wanted = wanted
        self.handed_out = 0
        self.skipped = 0  # variants dropped: their configuration had run

    def next_trial(self) -> Any:
        if self.budget_spent() or (self.wanted is not None and self.handed_out >= self.wanted):
            self.set_finished()
            return None
        while True:
            trial = super().next_trial()
            if trial is None or self.ran is None:
                return trial
            key = config_key(trial.config)
            if key not in self.ran:
                break
            self._live_trials.discard(trial.trial_id)
            self.skipped += 1
        if self.wanted is not None:
            self.ran.add(key)  # random: the new trials do not repeat each other either
        self.handed_out += 1
        return trial

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
        max_total_epochs: int | None, history: History | None = None,
    ):
        super().__init__()
        self.space = space
        self.sampler_name = sampler
        self.history = history
        seed = history.sampler_seed if history is not None else seed
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
        self.priors_told = 0  # earlier configurations added to the study (extend)
        self.priors_outside = 0  # ... left out: not a point of this space
        self.duplicates = 0  # suggestions dropped: their configuration had run
        self.infeasible: set[str] = set()  # trials out of GPU memory on a whole GPU

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
        if self.history is not None:
            self._tell_priors(self.history.priors)
        return True

    def _tell_priors(self, priors: list[Prior]) -> None:
        """The lineage's configurations into the study, as finished trials (see the module doc)."""
        import optuna

        study = self.inner._ot_study  # OptunaSearch's own study: add_evaluated_point refuses define-by-run
        for earlier in priors:
            point = optuna_point(self.space, earlier.config)
            if point is None:
                self.priors_outside += 1
                continue
            params, distributions = point
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState[earlier.state], value=earlier.value, params=params,
                distributions=distributions, intermediate_values=earlier.curve or None,
                user_attrs={PRIOR_ATTR: earlier.source},
            ))
            self.priors_told += 1

    @property
    def repeats(self) -> int:
        return len(self.seeds) if self.seeds else 1

    def suggest(self, trial_id: str) -> dict | None:
        if self.budget_spent():
            return Searcher.FINISHED
        group_id = next((g for g, grp in self.groups.items() if grp.handed_out < self.repeats), None)
        if group_id is None:
            group_id = f"config-{len(self.groups):05d}"
            config = self._new_config(group_id)
            if config is None:
                return Searcher.FINISHED
            self.groups[group_id] = _Group(config)
        group = self.groups[group_id]
        seed = self.seeds[group.handed_out] if self.seeds else self._rng.randrange(SEED_RANGE)
        group.handed_out += 1
        group.trials.append(trial_id)
        self.group_of[trial_id] = group_id
        return {**copy.deepcopy(group.config), "seed": seed}

    def _new_config(self, group_id: str) -> dict | None:
        """A configuration from Optuna; when extending, one not run in the lineage: a repeat is
        told to Optuna as failed (TPE ignores it) and another drawn. None: every draw repeated."""
        for draw in range(MAX_DRAWS_PER_SUGGESTION):
            optuna_id = group_id if draw == 0 else f"{group_id}-redraw{draw}"
            suggested = self.inner.suggest(optuna_id)
            # OptunaSearch merges the flat Optuna parameter names into what DefineByRun returned: keep the config.
            config = {k: v for k, v in suggested.items() if k in self.space}
            if self.history is None:
                return config
            key = config_key(config)
            if key not in self.history.ran:
                self.history.ran.add(key)
                if draw:
                    self.inner._ot_trials[group_id] = self.inner._ot_trials.pop(optuna_id)
                return config
            self.inner.on_trial_complete(optuna_id, None, error=True)
            self.duplicates += 1
        return None

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

    def mark_infeasible(self, trial_id: str) -> None:
        self.infeasible.add(trial_id)

    def _tell(self, group_id: str, group: _Group) -> None:
        if group.errors & self.infeasible:
            self.inner._ot_trials[group_id].set_constraint("gpu_memory", 1.0)  # > 0: violated
            self.inner.on_trial_complete(group_id, None)  # no value, no error: PRUNED
            self.told[group_id] = "INFEASIBLE"
            return
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


def build_random(space: dsl.Node, spec: Any, history: History | None = None) -> tuple[Any, int, dict[str, Any]]:
    """Ray's variant generator over the space ({grid: ...} values enumerated); with repeats, one
    Optuna random sample per configuration, run with every repeat seed."""
    if spec.repeats > 1:
        return _optuna(space, spec, "random", history)
    return _variants(space, spec, enumerate_ranges=False, history=history)


def build_grid(space: dsl.Node, spec: Any, history: History | None = None) -> tuple[Any, int, dict[str, Any]]:
    """Every choice and int range enumerated; repeats become one more grid axis of seeds."""
    return _variants(space, spec, enumerate_ranges=True, history=history)


def build_optuna_tpe(space: dsl.Node, spec: Any, history: History | None = None) -> tuple[Any, int, dict[str, Any]]:
    return _optuna(space, spec, "tpe", history)


def _optuna(space: dsl.Node, spec: Any, sampler: str, history: History | None) -> tuple[Any, int, dict[str, Any]]:
    # Repeat seeds stay the sweep's own when extending: every configuration of the lineage sees the same ones.
    seeds = repeat_seeds(spec.seed, spec.repeats) if spec.repeats > 1 else None
    searcher = OptunaRepeats(
        space, sampler=sampler, seed=spec.seed, seeds=seeds, max_epochs=spec.budget.max_epochs,
        max_total_epochs=spec.budget.max_total_epochs, history=history,
    )
    # Tune hands metric and mode to a searcher only with a non-empty param_space; every
    # suggestion carries its own seed, which replaces this placeholder.
    return searcher, spec.budget.trials * spec.repeats, {"seed": 0}


def _variants(space: dsl.Node, spec: Any, enumerate_ranges: bool,
              history: History | None = None) -> tuple[Any, int, dict[str, Any]]:
    from ray import tune

    compiled = dsl.to_tune(space, enumerate_ranges=enumerate_ranges)
    if "seed" not in compiled:
        # Every trial draws its own seed from the sweep's seeded generator (or runs each repeat seed).
        seeds = repeat_seeds(spec.seed, spec.repeats) if spec.repeats > 1 else None
        compiled["seed"] = tune.grid_search(seeds) if seeds else tune.randint(0, SEED_RANGE)
    # Tune applies max_concurrent_trials only to a Searcher: the variant generator takes its own.
    if history is None:
        variants = BudgetedVariants(random_state=spec.seed, max_total_epochs=spec.budget.max_total_epochs,
                                    max_concurrent=spec.max_concurrent_trials or 0)
        return variants, spec.budget.trials, compiled
    # Extending: draws from a new seed, configurations run in the lineage dropped (see BudgetedVariants).
    wanted = None if enumerate_ranges else spec.budget.trials * dsl.grid_points(space)
    variants = BudgetedVariants(random_state=history.sampler_seed, max_total_epochs=spec.budget.max_total_epochs,
                                max_concurrent=spec.max_concurrent_trials or 0, ran=set(history.ran), wanted=wanted)
    samples = spec.budget.trials if wanted is None else wanted + len(history.ran) + MAX_DRAWS_PER_SUGGESTION
    return variants, samples, compiled


@contextmanager
def pending_trials_limit(spec: Any) -> Iterator[None]:
    """How many trials Tune may queue ahead (Ray's variant generator queues up to 200), while the
    sweep runs. With an epoch budget: at most ``max_concurrent_trials`` (default 1), so few start
    after the budget is spent. With ``gpu_memory: auto``: one, because a trial is sized when Tune
    creates it (``MemoryShares.on_trial_add``), so each is sized with what earlier trials of its shape
    measured instead of a queue of them all sized at a whole GPU before anything is measured."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if key in os.environ:
        limit = None  # the user's own setting
    elif spec.budget.max_total_epochs is not None:
        limit = spec.max_concurrent_trials or 1
    elif spec.resources.gpu_memory == "auto":
        limit = 1
    else:
        limit = None
    if limit is None:
        yield
        return
    os.environ[key] = str(limit)
    try:
        yield
    finally:
        os.environ.pop(key, None)

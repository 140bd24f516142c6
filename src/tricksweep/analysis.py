"""What a finished sweep says about each trick: per-trick effects with bootstrap intervals,
fANOVA importance, and the spec's claims tested. Reads a ``RecordedSweep``; no Ray, no MLflow.

    sweep = load_sweep(uri, "claims_digits")
    for line in effect_lines(effects(sweep), sweep.metric): print(line)
    evaluate_claims(sweep, sweep.spec["claims"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tricksweep.leaderboard import format_value
from tricksweep.records import RecordedSweep, TrialRecord

# How trials enter the statistics:
# - leaderboard: every trial with its best value over the epochs it ran; configurations (all
#   params but the seed) are ranked by the mean over their repeats, with the spread.
# - effects, importance, claims: the unit is a configuration (mean over its repeats), and a
#   trial's value is its best value up to the *comparison epoch*: with ASHA, the first rung
#   (grace_epochs), the budget every trial got, so trials ASHA stopped enter at equal budget
#   and the survivors' extra epochs do not count as an effect of their tricks; without ASHA,
#   the full budget. Trials that stopped themselves (early stopping, divergence) enter with
#   their best value over the epochs they ran; failed trials are left out.

MIN_TRIALS_FOR_EFFECTS = 5
BOOTSTRAP = 2000
MAX_OPTIONS = 8  # more distinct numeric values than this: the trick is shown in quantile bins

# Effects ----------------------------------------------------------------------------------------


@dataclass
class Effect:
    trick: str
    option: str
    n: int  # configurations with this option
    mean: float
    ci: tuple[float, float]
    diff: float | None  # option minus the other options, marginalised over everything else
    diff_ci: tuple[float, float] | None
    verdict: str


def _units(sweep: RecordedSweep, value_of: Any) -> list[tuple[dict[str, Any], float]]:
    """One (params, value) per configuration: the mean of ``value_of(trial)`` over its repeats."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for trial in sweep.finished:
        groups.setdefault(trial.config_key(), []).append(trial)
    units = []
    for members in groups.values():
        values = [v for t in members if (v := value_of(t)) is not None and math.isfinite(v)]
        if values:
            units.append(({k: v for k, v in members[0].params.items() if k != "seed"}, sum(values) / len(values)))
    return units


def _tricks(units: list[tuple[dict, float]]) -> dict[str, Any]:
    """Swept parameters -> function mapping a value to its option label (bins for many numbers)."""
    seen: dict[str, set] = {}
    for params, _ in units:
        for key, value in params.items():
            seen.setdefault(key, set()).add(repr(value))
    tricks: dict[str, Any] = {}
    for key in sorted(seen):
        values = [p[key] for p, _ in units if key in p]
        if len(seen[key]) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(seen[key]) > MAX_OPTIONS:
            ordered = sorted(values)
            edges = [ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]]
            tricks[key] = _binner(edges)
        else:
            tricks[key] = format_value
    return tricks


def _binner(edges: list[float]) -> Any:
    def label(value: Any) -> str:
        if value < edges[0]:
            return f"< {edges[0]:.3g}"
        if value < edges[1]:
            return f"[{edges[0]:.3g}, {edges[1]:.3g})"
        return f">= {edges[1]:.3g}"

    return label


def _bootstrap_mean(values: list[float], rng: Any) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return float(arr.mean()), float(arr.mean())
    means = arr[rng.integers(0, len(arr), size=(BOOTSTRAP, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _bootstrap_diff(a: list[float], b: list[float], rng: Any) -> tuple[float, float]:
    import numpy as np

    x, y = np.asarray(a, float), np.asarray(b, float)
    dx = x[rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))].mean(axis=1)
    dy = y[rng.integers(0, len(y), size=(BOOTSTRAP, len(y)))].mean(axis=1)
    d = dx - dy
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def scale_of(metric: str) -> tuple[float, str]:
    """Accuracies are shown in percentage points, anything else in its own unit."""
    return (100.0, " pts") if metric.endswith("accuracy") else (1.0, "")


def _verdict(diff: float, ci: tuple[float, float], mode: str, metric: str) -> str:
    scale, unit = scale_of(metric)
    text = f"{diff * scale:+.2f}{unit} [{ci[0] * scale:.2f}, {ci[1] * scale:.2f}]"
    if ci[0] <= 0 <= ci[1]:
        return f"{text}, no detectable effect"
    better = (diff > 0) == (mode == "max")
    return f"{text}, {'helps' if better else 'hurts'}"


def effects(sweep: RecordedSweep, seed: int = 0) -> list[Effect]:
    """Per trick and option: the metric (at the comparison epoch) with a 95% bootstrap interval,
    and the difference to the trick's other options, marginalised over every other trick."""
    import numpy as np

    rng = np.random.default_rng(seed)
    until = sweep.comparison_epoch
    units = _units(sweep, lambda t: t.best(sweep.metric, sweep.mode, until)[0])
    out: list[Effect] = []
    for trick, label_of in _tricks(units).items():
        by_option: dict[str, list[float]] = {}
        for params, value in units:
            if trick in params:
                by_option.setdefault(label_of(params[trick]), []).append(value)
        if len(by_option) < 2:
            continue
        for option, values in sorted(by_option.items()):
            others = [v for o, vs in by_option.items() if o != option for v in vs]
            mean = sum(values) / len(values)
            diff = diff_ci = None
            verdict = "too few configurations"
            if len(values) >= 2 and len(others) >= 2:
                diff = mean - sum(others) / len(others)
                diff_ci = _bootstrap_diff(values, others, rng)
                verdict = _verdict(diff, diff_ci, sweep.mode, sweep.metric)
            out.append(Effect(trick, option, len(values), mean, _bootstrap_mean(values, rng), diff, diff_ci, verdict))
    return out


def effect_lines(found: list[Effect], metric: str) -> list[str]:
    """Plain-language verdicts: ``batch_norm=True: +2.10 pts [1.30, 2.90], helps``, biggest first.
    A trick with two options gets one line (the second option's is its mirror image)."""
    lines, shown = [], set()
    ranked = sorted((e for e in found if e.diff is not None), key=lambda e: -abs(e.diff))
    for e in ranked:
        options = sum(1 for x in found if x.trick == e.trick)
        if options == 2 and e.trick in shown:
            continue
        shown.add(e.trick)
        lines.append(f"{e.trick}={e.option}: {e.verdict} (vs the other {'option' if options == 2 else 'options'})")
    return lines


# Importance -------------------------------------------------------------------------------------


def importance(sweep: RecordedSweep, seed: int = 0) -> dict[str, float]:
    """fANOVA importance (Optuna's evaluator) of each swept parameter for the metric at the
    comparison epoch, over configurations. Conditional categorical parameters get an
    'inactive' level; conditional numeric ones (e.g. momentum) are left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    until = sweep.comparison_epoch
    units = _units(sweep, lambda t: t.best(sweep.metric, sweep.mode, until)[0])
    if len(units) < MIN_TRIALS_FOR_EFFECTS:
        return {}
    keys = sorted({k for p, _ in units for k in p})
    distributions: dict[str, Any] = {}
    for key in keys:
        values = [p.get(key, "inactive") for p, _ in units]
        if len({repr(v) for v in values}) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            distributions[key] = FloatDistribution(float(min(values)), float(max(values)))
        elif (all(key in p for p, _ in units)
              or not any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            distributions[key] = CategoricalDistribution(sorted({format_value(v) for v in values}))
    if not distributions:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for params, value in units:
        trial_params = {
            k: (float(params[k]) if isinstance(d, FloatDistribution) else format_value(params.get(k, "inactive")))
            for k, d in distributions.items()
        }
        study.add_trial(optuna.trial.create_trial(params=trial_params, distributions=distributions, value=value))
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), normalize=True
        )
    except (ValueError, RuntimeError):
        return {}
    return dict(found)


# Claims -----------------------------------------------------------------------------------------


@dataclass
class ClaimResult:
    claim: str
    measure: str
    effect: float | None
    ci: tuple[float, float] | None
    n: tuple[int, int]
    verdict: str  # supported / not supported / inconclusive
    note: str = ""
    quantity: str = ""  # the metric measured: sets the unit (pts for accuracies)

    def measured(self) -> str:
        if self.effect is None or self.ci is None:
            return "-"
        scale, unit = scale_of(self.quantity)
        return f"{self.effect * scale:+.2f}{unit} [{self.ci[0] * scale:.2f}, {self.ci[1] * scale:.2f}]"


def measure_of(sweep: RecordedSweep, measure: str) -> Any:
    """Per-trial value of a claim's measure (None where the trial cannot give it)."""
    def last(curve: dict[int, float]) -> float | None:
        return curve[max(curve)] if curve else None

    if measure == "best":
        return lambda t: t.best(sweep.metric, sweep.mode, sweep.comparison_epoch)[0]
    if measure == "gap":
        def gap(t: TrialRecord) -> float | None:
            v, tr = t.history.get("val_loss", {}), t.history.get("train_loss", {})
            return (last(v) - last(tr)) if v and tr and None not in (last(v), last(tr)) else None
        return gap
    if measure == "overshoot":
        def overshoot(t: TrialRecord) -> float | None:
            v = {e: x for e, x in t.history.get("val_loss", {}).items() if math.isfinite(x)}
            return last(v) - min(v.values()) if v else None
        return overshoot
    metric, _, epoch = measure.partition("@")
    return lambda t: t.history.get(metric, {}).get(int(epoch))


def _matches(params: dict[str, Any], where: dict[str, Any] | list[dict[str, Any]]) -> bool:
    if isinstance(where, list):
        return any(_matches(params, w) for w in where)
    for key, rule in where.items():
        if key not in params:
            return False
        value = params[key]
        if isinstance(rule, dict):
            if "min" in rule and not value >= rule["min"]:
                return False
            if "max" in rule and not value <= rule["max"]:
                return False
            if "not" in rule and _same(value, rule["not"]):
                return False
        elif isinstance(rule, list):
            if not any(_same(value, r) for r in rule):
                return False
        elif not _same(value, rule):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and not isinstance(a, bool) and not isinstance(b, bool)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b or str(a) == str(b)


def evaluate_claims(sweep: RecordedSweep, claims: list[dict[str, Any]], seed: int = 0) -> list[ClaimResult]:
    """Each claim's effect (treatment minus control; with ``versus_where``, the difference of two
    such effects) with a 95% bootstrap interval over configurations, and a verdict.

    With ``adjust`` (the default) the effect is the treatment coefficient of a linear model that
    also has every other swept parameter as a categorical covariate: in a random design the other
    tricks are not confounders, but they are most of the noise, and the model takes it out. Fewer
    than 3 configurations per column of the model: the plain difference of means (said in the note)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    results = []
    for claim in claims:
        measure = claim.get("measure", "best")
        quantity = (sweep.metric if measure == "best" else "val_loss" if measure in ("gap", "overshoot")
                    else measure.split("@")[0])
        units = _units(sweep, measure_of(sweep, measure))
        param = claim["param"]

        def side(params: dict, param: str = param, claim: dict = claim) -> int | None:
            if param not in params:
                return None
            if any(_same(params[param], x) for x in claim["treatment"]):
                return 1
            if any(_same(params[param], x) for x in claim["control"]):
                return 0
            return None

        versus = claim.get("versus_where")
        rows = []  # (params, value, treated, in `where` (1) or in `versus_where` (0))
        for params, value in units:
            treated = side(params)
            if treated is None:
                continue
            if _matches(params, claim.get("where") or {}):
                rows.append((params, value, treated, 1))
            elif versus is not None and _matches(params, versus):
                rows.append((params, value, treated, 0))
        cells = [(t, w) for w in ((1, 0) if versus is not None else (1,)) for t in (1, 0)]
        counts = [sum(1 for r in rows if (r[2], r[3]) == cell) for cell in cells]
        n = (counts[0], counts[1])
        if min(counts) < 2:
            results.append(ClaimResult(claim["claim"], measure, None, None, n, "inconclusive",
                                       f"too few configurations ({', '.join(map(str, counts))}; need 2 per side)",
                                       quantity))
            continue
        y = np.asarray([r[1] for r in rows], float)
        basic = [[1.0, r[2], *([r[3], r[2] * r[3]] if versus is not None else [])] for r in rows]
        target = 3 if versus is not None else 1  # the column whose coefficient is the claim's effect
        # The claim's own group is left out: its other parameters are aliased with it (optimizer.lr
        # ranges differ per optimizer.name; crop.p moves with rotate.p in one augment block).
        group = param.split(".")[0]
        covariates = (_covariates([r[0] for r in rows], exclude=lambda key, group=group: key.split(".")[0] == group)
                      if claim.get("adjust", True) else [])
        x = np.asarray([b + c for b, c in zip(basic, covariates)] if covariates else basic, float)
        note = ""
        if covariates and len(rows) < 3 * x.shape[1]:
            # A model with nearly as many columns as rows fits noise: plain difference of means.
            x, note = np.asarray(basic, float), "unadjusted: too few configurations for the covariates"
        effect = float(np.linalg.lstsq(x, y, rcond=None)[0][target])
        boot = []
        for _ in range(BOOTSTRAP):
            idx = rng.integers(0, len(rows), size=len(rows))
            xb = x[idx]
            if len({(xb[i, 1], xb[i, 2] if versus is not None else 1) for i in range(len(idx))}) < len(cells):
                continue  # a resample without one of the cells says nothing about the effect
            boot.append(np.linalg.lstsq(xb, y[idx], rcond=None)[0][target])
        ci = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        sign = 1 if claim["expect"] == "higher" else -1
        if ci[0] <= 0 <= ci[1]:
            verdict = "inconclusive"
        elif sign * effect > 0:
            verdict = "supported"
        else:
            verdict = "not supported"
        results.append(ClaimResult(claim["claim"], measure, effect, ci, n, verdict, note, quantity))
    return results


def _covariates(params_list: list[dict[str, Any]], exclude: Any) -> list[list[float]]:
    """One-hot columns (first level dropped) of every other swept parameter; numbers with many
    values in three bins; a conditional parameter's absence is a level of its own."""
    units = [(p, 0.0) for p in params_list]
    columns: list[list[float]] = [[] for _ in params_list]
    for key, label_of in _tricks(units).items():
        if exclude(key):
            continue
        labels = [label_of(p[key]) if key in p else "(inactive)" for p in params_list]
        for level in sorted(set(labels))[1:]:
            for row, label in zip(columns, labels):
                row.append(1.0 if label == level else 0.0)
    return columns

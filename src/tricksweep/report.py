"""What a finished sweep found: the leaderboard, on the console and as CSV."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricksweep.space import flatten
from tricksweep.tracking import end_status, trial_name


@dataclass
class Row:
    trial_id: str
    status: str
    epochs: int
    value: float | None  # the metric at the trial's best epoch
    best_epoch: int
    last_value: float | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return flatten(self.config)


def leaderboard(grid: Any, metric: str, mode: str, statuses: dict[str, str], max_epochs: int, asha: bool) -> list[Row]:
    """One row per trial, best first, ranked by the metric at each trial's best epoch."""
    rows = []
    for result in grid:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or Path(result.path).name
        status = statuses.get(trial_id)
        if status is None:
            status = "failed" if result.error else end_status(last, max_epochs=max_epochs, asha=asha, out_of_time=False)[0]
        history = result.metrics_dataframe
        value, best_epoch = _finite(last.get(metric)), int(last.get("epoch") or 0)
        if history is not None and metric in history and not history[metric].dropna().empty:
            series = history[metric].dropna()
            index = series.idxmax() if mode == "max" else series.idxmin()
            value, best_epoch = float(series[index]), int(history["epoch"][index])
        rows.append(
            Row(trial_id, status, int(last.get("epoch") or 0), value, best_epoch, _finite(last.get(metric)), result.config or {})
        )
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r.value is None, sign * (r.value or 0.0)))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def varying_params(rows: list[Row]) -> list[str]:
    """Parameters whose value differs between trials (the seed excluded): the tricks that were swept."""
    seen: dict[str, set] = {}
    for row in rows:
        for key, value in row.params.items():
            seen.setdefault(key, set()).add(repr(value))
    keys = [k for k, values in seen.items() if k != "seed" and (len(values) > 1 or any(k not in r.params for r in rows))]
    return sorted(keys)


def leaderboard_table(rows: list[Row], metric: str, top: int = 10):
    """A rich Table of the top rows with their trick settings."""
    from rich.table import Table

    keys = varying_params(rows)
    table = Table(title=f"top {min(top, len(rows))} of {len(rows)} trials by {metric}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("trial")
    table.add_column(metric, justify="right")
    table.add_column("best/epochs", justify="right")
    table.add_column("status")
    table.add_column("settings")
    for rank, row in enumerate(rows[:top], 1):
        params = row.params
        settings = " ".join(f"{_short_key(k)}={_fmt(params[k])}" for k in keys if k in params)
        value = "-" if row.value is None else f"{row.value:.4f}"
        table.add_row(str(rank), trial_name(row.trial_id), value, f"{row.best_epoch}/{row.epochs}", row.status, settings)
    return table


def write_leaderboard_csv(rows: list[Row], path: Path) -> None:
    keys = sorted({k for row in rows for k in row.params})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "trial_id", "status", "best_value", "best_epoch", "epochs", "last_value", *keys])
        for rank, row in enumerate(rows, 1):
            params = row.params
            writer.writerow(
                [rank, row.trial_id, row.status, row.value, row.best_epoch, row.epochs, row.last_value,
                 *(params.get(k, "") for k in keys)]
            )


def _short_key(key: str) -> str:
    parts = key.split(".")
    if parts[-1] == "name":
        return parts[-2] if len(parts) > 1 else key
    return ".".join(parts[-2:])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --- Insight: what the finished sweep says about each trick -----------------------------------
#
# Built from MLflow alone (the parent run's resolved spec, the child runs' params, metric
# histories and status tags), so it works for any recorded sweep, local or from a cluster.
#
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


@dataclass
class RecordedTrial:
    run_id: str
    trial_id: str
    name: str
    status: str
    params: dict[str, Any]
    history: dict[str, dict[int, float]]  # metric -> epoch -> value

    @property
    def epochs(self) -> int:
        return max((max(h) for h in self.history.values() if h), default=0)

    def config_key(self) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in self.params.items() if k != "seed"))


@dataclass
class Sweep:
    name: str
    uri: str
    parent_run_id: str
    spec: dict[str, Any]
    trials: list[RecordedTrial]

    @property
    def metric(self) -> str:
        return self.spec["metric"]

    @property
    def mode(self) -> str:
        return self.spec["mode"]

    @property
    def max_epochs(self) -> int:
        return int(self.spec["budget"]["max_epochs"])

    @property
    def asha(self) -> bool:
        return (self.spec.get("scheduler") or {}).get("type", "asha") == "asha"

    @property
    def comparison_epoch(self) -> int:
        return int(self.spec["scheduler"].get("grace_epochs", 1)) if self.asha else self.max_epochs

    @property
    def finished(self) -> list[RecordedTrial]:
        return [t for t in self.trials if t.status not in ("failed", "lost", "running", "") and t.history.get(self.metric)]


def _parse_param(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool, type(None))) else text


def load_sweep(uri: str, name: str) -> Sweep:
    """The latest recorded run of sweep ``name`` (SpecError listing the sweeps found if none)."""
    import tempfile

    import yaml

    from tricksweep.tracking import PARENT_TAG, STATUS_TAG, TRIAL_TAG, SweepRun

    sweep = SweepRun.latest(uri, name)
    client = sweep.client
    with tempfile.TemporaryDirectory() as tmp:
        try:
            spec = yaml.safe_load(Path(client.download_artifacts(sweep.run_id, "spec/resolved_spec.yaml", tmp)).read_text())
        except Exception:  # noqa: BLE001 - an old or partial record: fall back to the parent's params
            spec = None
    if spec is None:
        params = client.get_run(sweep.run_id).data.params
        spec = {"metric": params.get("metric", "val_accuracy"), "mode": params.get("mode", "max"),
                "budget": {"max_epochs": int(params.get("budget.max_epochs", 1))},
                "scheduler": {"type": params.get("scheduler.type", "asha"), "grace_epochs": int(params.get("scheduler.grace_epochs", 1))}}
    runs = client.search_runs(
        [sweep.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweep.run_id}'", max_results=50000
    )
    wanted = {spec["metric"], "train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    trials = []
    for run in runs:
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics if key in wanted
        }
        status = run.data.tags.get(STATUS_TAG) or ("failed" if run.info.status == "FAILED" else "running")
        trials.append(RecordedTrial(
            run.info.run_id, run.data.tags.get(TRIAL_TAG, run.info.run_id), run.info.run_name or "", status,
            {k: _parse_param(v) for k, v in run.data.params.items()}, history,
        ))
    trials.sort(key=lambda t: t.name)
    return Sweep(name, uri, sweep.run_id, spec, trials)


def _best(values: Any, mode: str) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return (max if mode == "max" else min)(finite) if finite else None


def trial_value(sweep: Sweep, trial: RecordedTrial, until: int | None = None) -> float | None:
    """The sweep's metric at the trial's best epoch (up to epoch ``until``)."""
    curve = trial.history.get(sweep.metric, {})
    return _best([v for e, v in curve.items() if until is None or e <= until], sweep.mode)


# Leaderboard over configurations ----------------------------------------------------------------


@dataclass
class ConfigRow:
    params: dict[str, Any]
    trials: list[RecordedTrial]
    values: list[float]
    epochs: int  # summed over its trials

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def spread(self) -> float:
        """Sample standard deviation over repeats (0 for one)."""
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


def config_leaderboard(sweep: Sweep) -> list[ConfigRow]:
    groups: dict[tuple, list[RecordedTrial]] = {}
    for trial in sweep.trials:
        groups.setdefault(trial.config_key(), []).append(trial)
    rows = []
    for members in groups.values():
        values = [v for t in members if (v := trial_value(sweep, t)) is not None]
        params = {k: v for k, v in members[0].params.items() if k != "seed"}
        rows.append(ConfigRow(params, members, values, sum(t.epochs for t in members)))
    sign = -1 if sweep.mode == "max" else 1
    return sorted(rows, key=lambda r: (r.mean is None, sign * (r.mean or 0.0)))


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


def _units(sweep: Sweep, value_of: Any) -> list[tuple[dict[str, Any], float]]:
    """One (params, value) per configuration: the mean of ``value_of(trial)`` over its repeats."""
    groups: dict[tuple, list[RecordedTrial]] = {}
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
            tricks[key] = _fmt
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


def effects(sweep: Sweep, seed: int = 0) -> list[Effect]:
    """Per trick and option: the metric (at the comparison epoch) with a 95% bootstrap interval,
    and the difference to the trick's other options, marginalised over every other trick."""
    import numpy as np

    rng = np.random.default_rng(seed)
    until = sweep.comparison_epoch
    units = _units(sweep, lambda t: trial_value(sweep, t, until))
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


def importance(sweep: Sweep, seed: int = 0) -> dict[str, float]:
    """fANOVA importance (Optuna's evaluator) of each swept parameter for the metric at the
    comparison epoch, over configurations. Conditional categorical parameters get an
    'inactive' level; conditional numeric ones (e.g. momentum) are left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    until = sweep.comparison_epoch
    units = _units(sweep, lambda t: trial_value(sweep, t, until))
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
        elif all(key in p for p, _ in units) or not any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            distributions[key] = CategoricalDistribution(sorted({_fmt(v) for v in values}))
    if not distributions:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for params, value in units:
        trial_params = {
            k: (float(params[k]) if isinstance(d, FloatDistribution) else _fmt(params.get(k, "inactive")))
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


def measure_of(sweep: Sweep, measure: str) -> Any:
    """Per-trial value of a claim's measure (None where the trial cannot give it)."""
    def last(curve: dict[int, float]) -> float | None:
        return curve[max(curve)] if curve else None

    if measure == "best":
        return lambda t: trial_value(sweep, t, sweep.comparison_epoch)
    if measure == "gap":
        def gap(t: RecordedTrial) -> float | None:
            v, tr = t.history.get("val_loss", {}), t.history.get("train_loss", {})
            return (last(v) - last(tr)) if v and tr and None not in (last(v), last(tr)) else None
        return gap
    if measure == "overshoot":
        def overshoot(t: RecordedTrial) -> float | None:
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
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b or str(a) == str(b)


def evaluate_claims(sweep: Sweep, claims: list[dict[str, Any]], seed: int = 0) -> list[ClaimResult]:
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
        quantity = sweep.metric if measure == "best" else "val_loss" if measure in ("gap", "overshoot") else measure.split("@")[0]
        units = _units(sweep, measure_of(sweep, measure))
        param = claim["param"]

        def side(params: dict) -> int | None:
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
                                       f"too few configurations ({', '.join(map(str, counts))}; need 2 per side)", quantity))
            continue
        y = np.asarray([r[1] for r in rows], float)
        basic = [[1.0, r[2], *([r[3], r[2] * r[3]] if versus is not None else [])] for r in rows]
        target = 3 if versus is not None else 1  # the column whose coefficient is the claim's effect
        # The claim's own group is left out: its other parameters are aliased with it (optimizer.lr
        # ranges differ per optimizer.name; crop.p moves with rotate.p in one augment block).
        group = param.split(".")[0]
        covariates = _covariates([r[0] for r in rows], exclude=lambda key: key.split(".")[0] == group) if claim.get("adjust", True) else []
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


# Plots ------------------------------------------------------------------------------------------


def _color_key(sweep: Sweep) -> str | None:
    keys = {k for t in sweep.trials for k in t.params}
    return next((k for k in ("optimizer.name", "optimizer", "init.name", "batch_norm") if k in keys), None)


def plot_learning_curves(sweep: Sweep, path: Path) -> None:
    import matplotlib.pyplot as plt

    key = _color_key(sweep)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors: dict[str, Any] = {}
    for trial in sweep.finished:
        curve = trial.history.get(sweep.metric, {})
        label = _fmt(trial.params.get(key, "-")) if key else "trial"
        if label not in colors:
            colors[label] = f"C{len(colors) % 10}"
        epochs = sorted(curve)
        ax.plot(epochs, [curve[e] for e in epochs], color=colors[label], alpha=0.45, lw=1,
                label=label if label not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"{sweep.name}: learning curves by {key or 'trial'}")
    if colors:
        ax.legend(title=key, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(sweep: Sweep, path: Path, count: int = 4) -> None:
    """Training vs validation loss for the best configuration and early-stopped trials, with
    the epoch each stopped at and the validation minimum."""
    import matplotlib.pyplot as plt

    finished = {t.run_id for t in sweep.finished}
    ranked = [max(r.trials, key=lambda t: t.epochs) for r in config_leaderboard(sweep) if r.trials]
    ranked = [t for t in ranked if t.run_id in finished]
    ranked = [t for t in ranked if t.epochs >= 2] or ranked  # a curve needs two points
    early = [t for t in sweep.finished if t.status == "early_stopped"]
    chosen: list[RecordedTrial] = []
    for trial in ranked[:1] + early[: count - 1] + ranked[1:count]:
        if all(trial.run_id != c.run_id for c in chosen):
            chosen.append(trial)
    chosen = chosen[:count]
    chosen = [t for t in chosen if t.history.get("val_loss") and t.history.get("train_loss")]
    if not chosen:
        raise ValueError("no trial recorded both train_loss and val_loss")
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.4), squeeze=False)
    for ax, trial in zip(axes[0], chosen):
        for key, style in (("train_loss", "C0"), ("val_loss", "C1")):
            curve = {e: v for e, v in trial.history[key].items() if math.isfinite(v)}
            ax.plot(sorted(curve), [curve[e] for e in sorted(curve)], color=style, label=key, marker=".")
        val = {e: v for e, v in trial.history["val_loss"].items() if math.isfinite(v)}
        if val:
            best = min(val, key=val.get)
            ax.axvline(best, color="C2", ls=":", label=f"val min (epoch {best})")
        if trial.status == "early_stopped":
            ax.axvline(trial.epochs, color="C3", ls="--", label=f"early stop (epoch {trial.epochs})")
        ax.set_title(f"{trial.name} ({trial.status})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def asha_rungs_of(sweep: Sweep) -> list[int]:
    from tricksweep.cli import asha_rungs

    s = sweep.spec["scheduler"]
    return asha_rungs(sweep.max_epochs, int(s.get("grace_epochs", 1)), float(s.get("reduction_factor", 3)))


def plot_asha(sweep: Sweep, path: Path) -> None:
    """Trials reaching each rung, and each trial's metric at each rung it reached: promoted
    (trained on) or stopped there by ASHA."""
    import matplotlib.pyplot as plt

    rungs = asha_rungs_of(sweep)
    if not rungs:
        raise ValueError("no ASHA rungs below max_epochs")
    marks = rungs + [sweep.max_epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    reached = [sum(1 for t in sweep.finished if t.epochs >= m) for m in marks]
    left.bar([str(m) for m in marks], reached, color="C0")
    for i, n in enumerate(reached):
        left.text(i, n, str(n), ha="center", va="bottom")
    left.set_xlabel("epoch (rung; last = full budget)")
    left.set_ylabel("trials reaching it")
    left.set_title("ASHA: trials per rung")
    for i, mark in enumerate(rungs):
        for trial in sweep.finished:
            value = trial.history.get(sweep.metric, {}).get(mark)
            if value is None:
                continue
            promoted = trial.epochs > mark
            right.scatter(i + (0.08 if promoted else -0.08), value, s=14, color="C2" if promoted else "C3",
                          label=("promoted" if promoted else "stopped here") if i == 0 else None, alpha=0.7)
    right.set_xticks(range(len(rungs)), [str(r) for r in rungs])
    right.set_xlabel("rung (epoch)")
    right.set_ylabel(sweep.metric)
    right.set_title("who was promoted")
    handles, labels = right.get_legend_handles_labels()
    if handles:
        right.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_effects(found: list[Effect], metric: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    shown = [e for e in found if e.diff is not None]
    if not shown:
        raise ValueError("no estimable effects")
    scale, unit = scale_of(metric)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(shown) + 1.2))
    ys = range(len(shown))
    diffs = [e.diff * scale for e in shown]
    err = [[(e.diff - e.diff_ci[0]) * scale for e in shown], [(e.diff_ci[1] - e.diff) * scale for e in shown]]
    colors = ["C7" if e.diff_ci[0] <= 0 <= e.diff_ci[1] else ("C2" if "helps" in e.verdict else "C3") for e in shown]
    ax.barh(list(ys), diffs, xerr=err, color=colors, capsize=3)
    ax.set_yticks(list(ys), [f"{e.trick}={e.option}" for e in shown], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{metric}: option minus the other options{unit} (95% bootstrap interval)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The report -------------------------------------------------------------------------------------


@dataclass
class Report:
    sweep: Sweep
    leaderboard: list[ConfigRow]
    effects: list[Effect]
    effects_note: str
    importance: dict[str, float]
    claims: list[ClaimResult]
    plots: dict[str, Path]
    plot_errors: dict[str, str]
    out: Path


def build_report(uri: str, name: str, out: Path, *, plots: bool = True, log: bool = True, top: int = 10) -> Report:
    """Read sweep ``name`` from MLflow, write the report to ``out`` and log it on the parent run
    under ``report/``."""
    import csv as _csv

    sweep = load_sweep(uri, name)
    out.mkdir(parents=True, exist_ok=True)
    board = config_leaderboard(sweep)
    finished = len(sweep.finished)
    if finished < MIN_TRIALS_FOR_EFFECTS:
        found, note, ranks = [], (f"effects not estimable: {finished} finished trial{'s' if finished != 1 else ''} "
                                  f"(need at least {MIN_TRIALS_FOR_EFFECTS})"), {}
    else:
        found = effects(sweep)
        ranks = importance(sweep)
        note = (f"{sweep.metric} at its best epoch up to epoch {sweep.comparison_epoch}"
                + (" (the first ASHA rung: every trial got that budget)" if sweep.asha else " (the full budget)")
                + "; one unit per configuration (mean over its repeats); 95% bootstrap intervals")
    claims = evaluate_claims(sweep, sweep.spec.get("claims") or [])

    with (out / "leaderboard.csv").open("w", newline="") as f:
        writer = _csv.writer(f)
        keys = varying_keys(board)
        writer.writerow(["rank", "mean", "spread", "repeats", "epochs", "statuses", *keys])
        for rank, row in enumerate(board, 1):
            writer.writerow([rank, row.mean, row.spread, len(row.trials), row.epochs,
                             " ".join(sorted(t.status for t in row.trials)), *(row.params.get(k, "") for k in keys)])
    with (out / "effects.csv").open("w", newline="") as f:
        writer = _csv.writer(f)
        writer.writerow(["trick", "option", "configurations", "mean", "ci_low", "ci_high", "diff_vs_others", "diff_low", "diff_high", "verdict"])
        for e in found:
            writer.writerow([e.trick, e.option, e.n, e.mean, *e.ci, e.diff, *(e.diff_ci or ("", "")), e.verdict])
    (out / "importance.csv").write_text("param,importance\n" + "".join(f"{k},{v}\n" for k, v in ranks.items()))
    if claims:
        with (out / "claims.csv").open("w", newline="") as f:
            writer = _csv.writer(f)
            writer.writerow(["claim", "measure", "effect", "ci_low", "ci_high", "n_treatment", "n_control", "verdict", "note"])
            for c in claims:
                writer.writerow([c.claim, c.measure, c.effect, *(c.ci or ("", "")), *c.n, c.verdict, c.note])

    made: dict[str, Path] = {}
    errors: dict[str, str] = {}
    if plots:
        makers = {
            "learning_curves": lambda p: plot_learning_curves(sweep, p),
            "losses": lambda p: plot_losses(sweep, p),
            "effects": lambda p: plot_effects(found, sweep.metric, p),
        }
        if sweep.asha:
            makers["asha_rungs"] = lambda p: plot_asha(sweep, p)
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError as err:
            errors["all"] = f"matplotlib missing ({err})"
            makers = {}
        (out / "plots").mkdir(exist_ok=True)
        for key, make in makers.items():
            path = out / "plots" / f"{key}.png"
            try:
                make(path)
                made[key] = path
            except Exception as err:  # noqa: BLE001 - a plot that cannot be drawn is skipped, with the reason
                errors[key] = f"{type(err).__name__}: {err}"
    report = Report(sweep, board, found, note, ranks, claims, made, errors, out)
    (out / "report.html").write_text(render_html(report, top))
    if log:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).log_artifacts(sweep.parent_run_id, str(out), "report")
    return report


def varying_keys(board: list[ConfigRow]) -> list[str]:
    seen: dict[str, set] = {}
    for row in board:
        for k, v in row.params.items():
            seen.setdefault(k, set()).add(repr(v))
    return sorted(k for k, v in seen.items() if len(v) > 1 or any(k not in r.params for r in board))


def render_html(report: Report, top: int = 10) -> str:
    import base64
    import html

    sweep = report.sweep
    scale, unit = scale_of(sweep.metric)
    esc = html.escape
    keys = varying_keys(report.leaderboard)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tricksweep report: {esc(sweep.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "th{background:#f3f3f3}.sup{color:#080}.not{color:#b00}.inc{color:#777}img{max-width:100%}</style></head><body>",
        f"<h1>Sweep <code>{esc(sweep.name)}</code></h1>",
        f"<p>{len(sweep.trials)} trials ({len(sweep.finished)} finished), {len(report.leaderboard)} configurations; "
        f"objective: {sweep.mode} {esc(sweep.metric)}; MLflow parent run <code>{sweep.parent_run_id}</code>.</p>",
        f"<h2>Leaderboard (top {min(top, len(report.leaderboard))})</h2><table><tr><th>#</th><th>{esc(sweep.metric)} mean &plusmn; sd</th>"
        "<th>repeats</th><th>epochs</th><th>status</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>",
    ]
    for rank, row in enumerate(report.leaderboard[:top], 1):
        mean = "-" if row.mean is None else f"{row.mean:.4f} &plusmn; {row.spread:.4f}"
        parts.append(f"<tr><td>{rank}</td><td>{mean}</td><td>{len(row.trials)}</td><td>{row.epochs}</td>"
                     f"<td>{esc(' '.join(sorted({t.status for t in row.trials})))}</td>"
                     + "".join(f"<td>{esc(_fmt(row.params.get(k, '')))}</td>" for k in keys) + "</tr>")
    parts.append("</table>")
    if report.claims:
        parts.append("<h2>Claims</h2><table><tr><th>claim</th><th>measure</th><th>effect [95% CI]</th><th>n</th><th>verdict</th></tr>")
        for c in report.claims:
            cls = {"supported": "sup", "not supported": "not"}.get(c.verdict, "inc")
            parts.append(f"<tr><td>{esc(c.claim)}</td><td>{esc(c.measure)}</td><td>{esc(c.measured())}</td>"
                         f"<td>{c.n[0]} vs {c.n[1]}</td><td class='{cls}'>{esc(c.verdict)} {esc(c.note)}</td></tr>")
        parts.append("</table>")
    parts.append(f"<h2>Per-trick effects</h2><p>{esc(report.effects_note)}</p>")
    if report.effects:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in effect_lines(report.effects, sweep.metric)) + "</ul>")
        parts.append(f"<table><tr><th>trick</th><th>option</th><th>configs</th><th>mean{unit} [95% CI]</th><th>verdict vs the others</th></tr>")
        for e in report.effects:
            parts.append(f"<tr><td>{esc(e.trick)}</td><td>{esc(e.option)}</td><td>{e.n}</td>"
                         f"<td>{e.mean * scale:.2f} [{e.ci[0] * scale:.2f}, {e.ci[1] * scale:.2f}]</td><td>{esc(e.verdict)}</td></tr>")
        parts.append("</table>")
    if report.importance:
        parts.append("<h2>Importance (fANOVA)</h2><table><tr><th>parameter</th><th>share of variance</th></tr>"
                     + "".join(f"<tr><td>{esc(k)}</td><td>{v:.3f}</td></tr>" for k, v in report.importance.items()) + "</table>")
    if report.plots or report.plot_errors:
        parts.append("<h2>Plots</h2>")
    for key, path in report.plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{esc(key.replace('_', ' '))}</h3><img alt='{esc(key)}' src='data:image/png;base64,{data}'>")
    for key, why in report.plot_errors.items():
        parts.append(f"<p class='inc'>plot {esc(key)} skipped: {esc(why)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def print_report(report: Report, console: Any, top: int = 10) -> None:
    from rich.table import Table

    sweep = report.sweep
    keys = varying_keys(report.leaderboard)
    table = Table(title=f"{sweep.name}: top {min(top, len(report.leaderboard))} of {len(report.leaderboard)} configurations "
                        f"by mean {sweep.metric}", title_justify="left")
    for col in ("#", f"{sweep.metric} mean ± sd", "n", "epochs", "status", "settings"):
        table.add_column(col)
    for rank, row in enumerate(report.leaderboard[:top], 1):
        mean = "-" if row.mean is None else f"{row.mean:.4f} ± {row.spread:.4f}"
        settings = " ".join(f"{_short_key(k)}={_fmt(row.params[k])}" for k in keys if k in row.params)
        table.add_row(str(rank), mean, str(len(row.trials)), str(row.epochs),
                      " ".join(sorted({t.status for t in row.trials})), settings)
    console.print(table)
    console.print(f"effects ({report.effects_note}):" if report.effects else report.effects_note, markup=False)
    for line in effect_lines(report.effects, sweep.metric):
        console.print(f"  {line}", markup=False)
    if report.importance:
        console.print("importance (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in list(report.importance.items())[:8]),
                      markup=False)
    if report.claims:
        claims = Table(title="claims", title_justify="left")
        for col in ("claim", "measured effect [95% CI]", "configs", "verdict"):
            claims.add_column(col)
        for c in report.claims:
            claims.add_row(c.claim, c.measured(), f"{c.n[0]} vs {c.n[1]}", c.verdict + (f" ({c.note})" if c.note else ""))
        console.print(claims)
    for key, why in report.plot_errors.items():
        console.print(f"plot {key} skipped: {why}", markup=False)
    console.print(f"report: {report.out / 'report.html'} (also on the parent run under report/)", markup=False)

"""The one leaderboard: configurations (every param but the seed) ranked by the mean over their
repeats of each trial's best value, with its console table and its CSV. The run's summary, the
parent run's ``leaderboard.csv`` and the report all use it.

    rows = rank(sweep.trials, "val_accuracy", "max", repeats=sweep.repeats > 1)
    rows[0].mean, rows[0].best_trial.name
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tricksweep.records import INFEASIBLE, TrialRecord


@dataclass
class ConfigRow:
    """One configuration and the trials that ran it (one per repeat seed)."""

    params: dict[str, Any]  # flattened, without the seed
    trials: list[TrialRecord]
    values: list[float]  # each trial's best value, for the trials that have one
    best_trial: TrialRecord  # the trial with the best value (the first one, when none has a value)
    best_value: float | None
    best_epoch: int

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def spread(self) -> float:
        """Sample standard deviation over repeats (0 for one)."""
        if len(self.values) < 2:
            return 0.0
        m = sum(self.values) / len(self.values)
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def epochs(self) -> int:
        """Epochs run, summed over its trials."""
        return sum(t.epochs for t in self.trials)

    @property
    def statuses(self) -> str:
        return " ".join(sorted({t.status for t in self.trials}))


def rank(trials: list[TrialRecord], metric: str, mode: str, *, repeats: bool) -> list[ConfigRow]:
    """Rows best first, by the mean of their trials' best values; none last. With ``repeats``
    (the sweep ran each configuration with several seeds) a row is a configuration and its
    trials; without, a row is one trial (two random draws of the same configuration stay two)."""
    groups: dict[Any, list[TrialRecord]] = {}
    for trial in trials:
        groups.setdefault(trial.config_key() if repeats else trial.trial_id, []).append(trial)
    better = max if mode == "max" else min
    rows = []
    for members in groups.values():
        # An infeasible trial's epochs before it ran out of GPU memory are no result: it is never best.
        scored = [(t, *(t.best(metric, mode) if t.status != INFEASIBLE else (None, 0))) for t in members]
        with_value = [s for s in scored if s[1] is not None]
        best = better(with_value, key=lambda s: s[1]) if with_value else scored[0]
        params = {k: v for k, v in members[0].params.items() if k != "seed"}
        rows.append(ConfigRow(params, members, [s[1] for s in with_value], *best))
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r.mean is None, sign * (r.mean or 0.0)))


def varying_keys(rows: list[ConfigRow]) -> list[str]:
    """Parameters whose value differs between configurations: the tricks that were swept."""
    seen: dict[str, set] = {}
    for row in rows:
        for key, value in row.params.items():
            seen.setdefault(key, set()).add(repr(value))
    return sorted(k for k, values in seen.items() if len(values) > 1 or any(k not in r.params for r in rows))


def has_repeats(rows: list[ConfigRow]) -> bool:
    return any(len(r.trials) > 1 for r in rows)


def value_text(row: ConfigRow, plus_minus: str = "±") -> str:
    """``0.9916``, or ``0.9900 ± 0.0012`` for a configuration with repeats; ``-`` without a value."""
    if row.mean is None:
        return "-"
    return f"{row.mean:.4f}" if len(row.trials) < 2 else f"{row.mean:.4f} {plus_minus} {row.spread:.4f}"


def title(rows: list[ConfigRow], metric: str, top: int) -> str:
    if has_repeats(rows):
        return f"top {min(top, len(rows))} of {len(rows)} configurations by mean {metric}"
    return f"top {min(top, len(rows))} of {len(rows)} trials by {metric}"


def settings_text(row: ConfigRow, keys: list[str]) -> str:
    return " ".join(f"{short_key(k)}={format_value(row.params[k])}" for k in keys if k in row.params)


def table(rows: list[ConfigRow], metric: str, top: int = 10, heading: str = "") -> Any:
    """A rich Table of the top configurations with their trick settings."""
    from rich.table import Table

    keys = varying_keys(rows)
    repeats = has_repeats(rows)
    out = Table(title=f"{heading}{title(rows, metric, top)}", title_justify="left")
    out.add_column("#", justify="right")
    out.add_column("trials" if repeats else "trial")
    out.add_column(f"{metric} mean ± sd" if repeats else metric, justify="right")
    out.add_column("best/epochs", justify="right")
    out.add_column("status")
    out.add_column("settings")
    for i, row in enumerate(rows[:top], 1):
        trial = row.best_trial
        who = trial.name if len(row.trials) == 1 else f"{len(row.trials)} seeds"
        out.add_row(str(i), who, value_text(row), f"{row.best_epoch}/{trial.epochs}", row.statuses,
                    settings_text(row, keys))
    return out


def write_csv(rows: list[ConfigRow], path: Path) -> None:
    """Every configuration with every param (the seed aside): rank, mean, spread, repeats, epochs..."""
    keys = sorted({k for row in rows for k in row.params})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "mean", "spread", "repeats", "epochs", "statuses", "best_trial", "best_value",
                         "best_epoch", *keys])
        for i, row in enumerate(rows, 1):
            writer.writerow([i, row.mean, row.spread, len(row.trials), row.epochs, row.statuses,
                             row.best_trial.trial_id, row.best_value, row.best_epoch,
                             *(row.params.get(k, "") for k in keys)])


def short_key(key: str) -> str:
    """``optimizer.name`` -> ``optimizer``, ``augment.rotate.p`` -> ``rotate.p``."""
    parts = key.split(".")
    if parts[-1] == "name":
        return parts[-2] if len(parts) > 1 else key
    return ".".join(parts[-2:])


def format_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

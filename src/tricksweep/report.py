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

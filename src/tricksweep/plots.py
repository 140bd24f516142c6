"""The report's plots (PNG, matplotlib's Agg backend): learning curves, train vs validation loss,
ASHA rungs, effect bars, the GPU timeline. Each raises ValueError when its data cannot make a plot.

    plot_learning_curves(load_sweep(uri, "quickstart"), Path("curves.png"))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tricksweep import asha, leaderboard
from tricksweep.analysis import Effect, scale_of
from tricksweep.leaderboard import format_value
from tricksweep.records import RecordedSweep, TrialRecord


def _color_key(sweep: RecordedSweep) -> str | None:
    keys = {k for t in sweep.trials for k in t.params}
    return next((k for k in ("optimizer.name", "optimizer", "init.name", "batch_norm") if k in keys), None)


def plot_learning_curves(sweep: RecordedSweep, path: Path) -> None:
    import matplotlib.pyplot as plt

    key = _color_key(sweep)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors: dict[str, Any] = {}
    for trial in sweep.finished:
        curve = trial.history.get(sweep.metric, {})
        label = format_value(trial.params.get(key, "-")) if key else "trial"
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


def plot_losses(sweep: RecordedSweep, path: Path, count: int = 4) -> None:
    """Training vs validation loss for the best configuration and early-stopped trials, with
    the epoch each stopped at and the validation minimum."""
    import matplotlib.pyplot as plt

    finished = {t.run_id for t in sweep.finished}
    ranked = [max(r.trials, key=lambda t: t.epochs)
              for r in leaderboard.rank(sweep.trials, sweep.metric, sweep.mode, repeats=sweep.repeats > 1)
              if r.trials]
    ranked = [t for t in ranked if t.run_id in finished]
    ranked = [t for t in ranked if t.epochs >= 2] or ranked  # a curve needs two points
    early = [t for t in sweep.finished if t.status == "early_stopped"]
    chosen: list[TrialRecord] = []
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


def plot_asha(sweep: RecordedSweep, path: Path) -> None:
    """Trials reaching each rung, and each trial's metric at each rung it reached: promoted
    (trained on) or stopped there by ASHA."""
    import matplotlib.pyplot as plt

    spec = sweep.spec["scheduler"]
    rungs = asha.rungs(sweep.max_epochs, int(spec.get("grace_epochs", 1)), float(spec.get("reduction_factor", 3)))
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


def plot_gpu_timeline(spans: list[Any], path: Path) -> None:
    """One row per GPU: a bar per trial over the time it ran there (lanes where trials shared it),
    shaded by its mean utilisation, and the device's memory in use (share of its total) over time."""
    import matplotlib.pyplot as plt

    if not spans:
        raise ValueError("no trial recorded GPU use")
    gpus = sorted({s.gpu for s in spans})
    origin = min(s.start_s for s in spans)
    fig, axes = plt.subplots(len(gpus), 1, figsize=(8, 1.2 + 1.3 * len(gpus)), sharex=True, squeeze=False)
    for ax, gpu in zip(axes[:, 0], gpus, strict=True):
        mine = sorted((s for s in spans if s.gpu == gpu), key=lambda s: s.start_s)
        lanes: list[float] = []  # each lane's end time: a trial takes the first lane free at its start
        for span in mine:
            lane = next((i for i, end in enumerate(lanes) if end <= span.start_s), len(lanes))
            lanes[lane:lane + 1] = [span.end_s]
            shade = plt.cm.viridis((span.utilization or 0.0) / 100)
            ax.barh(lane, (span.end_s - span.start_s) / 60, left=(span.start_s - origin) / 60, color=shade,
                    edgecolor="k", lw=0.4)
            ax.text((span.start_s - origin) / 60, lane, f" {span.trial}", va="center", fontsize=6)
        full = ax.twinx()
        points = sorted((t, used / total) for s in mine for t, used, total in s.memory if total)
        if points:
            full.plot([(t - origin) / 60 for t, _ in points], [f for _, f in points], "r.-", lw=0.8, ms=3)
        full.set_ylim(0, 1.05)
        full.set_ylabel("memory used", fontsize=7, color="r")
        ax.set_ylabel(gpu, fontsize=7)
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("minutes since the first GPU trial started (bar shade: utilisation, yellow = 100%)")
    fig.suptitle("GPU timeline: trials sharing each GPU, and how full it was")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

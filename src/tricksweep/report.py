"""The report of a finished sweep, built from MLflow alone: the leaderboard, per-trick effects,
importance, claims and plots, written as CSVs, PNGs and one self-contained ``report.html``,
printed on the console, and logged on the parent run under ``report/``. No Ray here.

    report = build_report("sqlite:////abs/mlflow.db", "quickstart", Path("reports/quickstart"))
    print_report(report, rich.console.Console())
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tricksweep import leaderboard, plots
from tricksweep.analysis import (
    MIN_TRIALS_FOR_EFFECTS,
    ClaimResult,
    Effect,
    effect_lines,
    effects,
    evaluate_claims,
    importance,
    scale_of,
)
from tricksweep.leaderboard import ConfigRow
from tricksweep.records import RecordedSweep, load_sweep


@dataclass
class SweepReport:
    sweep: RecordedSweep
    leaderboard: list[ConfigRow]
    effects: list[Effect]
    effects_note: str
    importance: dict[str, float]
    claims: list[ClaimResult]
    plots: dict[str, Path]
    plot_errors: dict[str, str]
    out: Path


def build_report(uri: str, name: str, out: Path, *, draw: bool = True, log: bool = True, top: int = 10,
                 lineage: bool = False) -> SweepReport:
    """Read sweep ``name`` from MLflow, write the report to ``out`` and (``log``) log it on the
    parent run under ``report/``; ``draw=False``: tables only; ``lineage``: over the trials of every
    run the latest one extends too (``tricksweep extend``)."""
    sweep = load_sweep(uri, name, lineage=lineage)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard.rank(sweep.trials, sweep.metric, sweep.mode, repeats=sweep.repeats > 1)
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
    _write_tables(out, board, found, ranks, claims)
    made, errors = _draw(sweep, found, out) if draw else ({}, {})
    report = SweepReport(sweep, board, found, note, ranks, claims, made, errors, out)
    (out / "report.html").write_text(render_html(report, top))
    if log:
        from tricksweep.tracking import open_client

        open_client(uri).log_artifacts(sweep.parent_run_id, str(out), "report")
    return report


def _write_tables(out: Path, board: list[ConfigRow], found: list[Effect], ranks: dict[str, float],
                  claims: list[ClaimResult]) -> None:
    leaderboard.write_csv(board, out / "leaderboard.csv")
    with (out / "effects.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trick", "option", "configurations", "mean", "ci_low", "ci_high", "diff_vs_others",
                         "diff_low", "diff_high", "verdict"])
        for e in found:
            writer.writerow([e.trick, e.option, e.n, e.mean, *e.ci, e.diff, *(e.diff_ci or ("", "")), e.verdict])
    (out / "importance.csv").write_text("param,importance\n" + "".join(f"{k},{v}\n" for k, v in ranks.items()))
    if claims:
        with (out / "claims.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["claim", "measure", "effect", "ci_low", "ci_high", "n_treatment", "n_control", "verdict",
                             "note"])
            for c in claims:
                writer.writerow([c.claim, c.measure, c.effect, *(c.ci or ("", "")), *c.n, c.verdict, c.note])


def _draw(sweep: RecordedSweep, found: list[Effect], out: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every plot that can be drawn, and why each other one was skipped."""
    makers = {
        "learning_curves": lambda p: plots.plot_learning_curves(sweep, p),
        "losses": lambda p: plots.plot_losses(sweep, p),
        "effects": lambda p: plots.plot_effects(found, sweep.metric, p),
    }
    if sweep.asha:
        makers["asha_rungs"] = lambda p: plots.plot_asha(sweep, p)
    spans = gpu_spans(sweep)
    if spans:  # only sweeps whose trials ran on GPUs (NVML recorded them)
        makers["gpu_timeline"] = lambda p: plots.plot_gpu_timeline(spans, p)
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as err:
        return {}, {"all": f"matplotlib missing ({err})"}
    made: dict[str, Path] = {}
    errors: dict[str, str] = {}
    (out / "plots").mkdir(exist_ok=True)
    for key, make in makers.items():
        path = out / "plots" / f"{key}.png"
        try:
            make(path)
            made[key] = path
        except Exception as err:  # noqa: BLE001 - a plot that cannot be drawn is skipped, with the reason
            errors[key] = f"{type(err).__name__}: {err}"
    return made, errors


@dataclass
class GpuSpan:
    """A trial's time on a GPU, read back from its child run (tags and NVML's per-epoch metrics)."""

    gpu: str  # node_ip/index
    trial: str
    start_s: float
    end_s: float
    utilization: float | None  # mean over its epochs, %
    memory: list[tuple[float, float, float]]  # (time s, device MiB used, device MiB total) per epoch


def gpu_spans(sweep: RecordedSweep) -> list[GpuSpan]:
    """Every trial that recorded which GPU it ran on, with its times and NVML's readings (one search
    for the sweep's GPU trials: a CPU sweep costs no more)."""
    from tricksweep.tracking import GPU_TAG, PARENT_TAG, open_client

    client = open_client(sweep.uri)
    experiment = client.get_run(sweep.parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], max_results=50000, filter_string=(
        f"tags.`{PARENT_TAG}` = '{sweep.parent_run_id}' and tags.`{GPU_TAG}` LIKE '%'"))
    names = {t.run_id: t.name for t in sweep.trials}
    spans = []
    for run in runs:
        if run.info.run_id not in names:
            continue  # not a trial of the sweep (a rerun)
        run_id = run.info.run_id
        used = _history(client, run_id, "gpu_device_memory_used_mib")
        total = {point.step: point.value for point in _history(client, run_id, "gpu_device_memory_total_mib")}
        util = [point.value for point in _history(client, run_id, "gpu_utilization")]
        end = run.info.end_time or max((point.timestamp for point in used), default=run.info.start_time)
        spans.append(GpuSpan(run.data.tags[GPU_TAG], names[run_id], run.info.start_time / 1000, end / 1000,
                             sum(util) / len(util) if util else None,
                             [(point.timestamp / 1000, point.value, total.get(point.step, 0.0)) for point in used]))
    return sorted(spans, key=lambda span: (span.gpu, span.start_s))


def _history(client: Any, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda point: point.step)


# Fits a laptop screen: fixed-layout tables at the page's width, long settings wrap in their cell.
_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:1em 0;width:100%;table-layout:fixed}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;overflow-wrap:anywhere}"
    "th{background:#f3f3f3}.sup{color:#080}.not{color:#b00}.inc{color:#777}img{max-width:100%}"
    "col.n{width:3em}col.v{width:11em}col.s{width:11em}col.e{width:6em}"
)


def render_html(report: SweepReport, top: int = 10) -> str:
    import base64
    import html

    sweep = report.sweep
    scale, unit = scale_of(sweep.metric)
    esc = html.escape
    board = report.leaderboard
    keys = leaderboard.varying_keys(board)
    repeats = leaderboard.has_repeats(board)
    metric_head = f"{esc(sweep.metric)} mean &plusmn; sd" if repeats else esc(sweep.metric)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>tricksweep report: {esc(sweep.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Sweep <code>{esc(sweep.name)}</code></h1>",
        f"<p>{len(sweep.trials)} trials ({len(sweep.finished)} finished), {len(board)} configurations; "
        f"objective: {sweep.mode} {esc(sweep.metric)}; MLflow parent run <code>{sweep.parent_run_id}</code>"
        + (f"; the lineage of {len(sweep.lineage)} runs (g0 the first): "
           + ", ".join(f"<code>{r}</code>" for r in sweep.lineage) if len(sweep.lineage) > 1 else "") + ".</p>",
        f"<h2>Leaderboard (top {min(top, len(board))})</h2><table>"
        "<colgroup><col class='n'><col class='v'><col class='e'><col class='e'><col class='s'><col></colgroup>"
        f"<tr><th>#</th><th>{metric_head}</th><th>{'repeats' if repeats else 'trial'}</th><th>epochs</th>"
        "<th>status</th><th>settings</th></tr>",
    ]
    for i, row in enumerate(board[:top], 1):
        who = str(len(row.trials)) if repeats else esc(row.best_trial.name)
        parts.append(f"<tr><td>{i}</td><td>{leaderboard.value_text(row, '&plusmn;')}</td><td>{who}</td>"
                     f"<td>{row.epochs}</td>"
                     f"<td>{esc(row.statuses)}</td><td>{esc(leaderboard.settings_text(row, keys))}</td></tr>")
    parts.append("</table>")
    if report.claims:
        parts.append("<h2>Claims</h2><table><colgroup><col><col class='s'><col class='v'><col class='e'><col class='s'>"
                     "</colgroup><tr><th>claim</th><th>measure</th><th>effect [95% CI]</th><th>n</th>"
                     "<th>verdict</th></tr>")
        for c in report.claims:
            cls = {"supported": "sup", "not supported": "not"}.get(c.verdict, "inc")
            parts.append(f"<tr><td>{esc(c.claim)}</td><td>{esc(c.measure)}</td><td>{esc(c.measured())}</td>"
                         f"<td>{c.n[0]} vs {c.n[1]}</td><td class='{cls}'>{esc(c.verdict)} {esc(c.note)}</td></tr>")
        parts.append("</table>")
    parts.append(f"<h2>Per-trick effects</h2><p>{esc(report.effects_note)}</p>")
    if report.effects:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in effect_lines(report.effects, sweep.metric))
                     + "</ul>")
        parts.append("<table><colgroup><col class='s'><col class='s'><col class='e'><col class='v'><col></colgroup>"
                     f"<tr><th>trick</th><th>option</th><th>configs</th><th>mean{unit} [95% CI]</th>"
                     "<th>verdict vs the others</th></tr>")
        for e in report.effects:
            parts.append(f"<tr><td>{esc(e.trick)}</td><td>{esc(e.option)}</td><td>{e.n}</td>"
                         f"<td>{e.mean * scale:.2f} [{e.ci[0] * scale:.2f}, {e.ci[1] * scale:.2f}]</td>"
                         f"<td>{esc(e.verdict)}</td></tr>")
        parts.append("</table>")
    if report.importance:
        parts.append("<h2>Importance (fANOVA)</h2><table><tr><th>parameter</th><th>share of variance</th></tr>"
                     + "".join(f"<tr><td>{esc(k)}</td><td>{v:.3f}</td></tr>" for k, v in report.importance.items())
                     + "</table>")
    if report.plots or report.plot_errors:
        parts.append("<h2>Plots</h2>")
    for key, path in report.plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{esc(key.replace('_', ' '))}</h3><img alt='{esc(key)}' src='data:image/png;base64,{data}'>")
    for key, why in report.plot_errors.items():
        parts.append(f"<p class='inc'>plot {esc(key)} skipped: {esc(why)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def print_report(report: SweepReport, console: Any, top: int = 10) -> None:
    from rich.table import Table

    sweep = report.sweep
    runs = f" (lineage of {len(sweep.lineage)} runs)" if len(sweep.lineage) > 1 else ""
    console.print(leaderboard.table(report.leaderboard, sweep.metric, top, heading=f"{sweep.name}{runs}: "))
    console.print(f"effects ({report.effects_note}):" if report.effects else report.effects_note, markup=False)
    for line in effect_lines(report.effects, sweep.metric):
        console.print(f"  {line}", markup=False)
    if report.importance:
        console.print("importance (fANOVA): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in list(report.importance.items())[:8]),
                      markup=False)
    if report.claims:
        claims = Table(title="claims", title_justify="left")
        for col in ("claim", "measured effect [95% CI]", "configs", "verdict"):
            claims.add_column(col)
        for c in report.claims:
            claims.add_row(c.claim, c.measured(), f"{c.n[0]} vs {c.n[1]}",
                           c.verdict + (f" ({c.note})" if c.note else ""))
        console.print(claims)
    for key, why in report.plot_errors.items():
        console.print(f"plot {key} skipped: {why}", markup=False)
    console.print(f"report: {report.out / 'report.html'} (also on the parent run under report/)", markup=False)

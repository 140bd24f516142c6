"""The report, built from an MLflow store: synthetic sweeps with known effects (no Ray), the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tricksweep.cli import main
from tricksweep.report import build_report, effect_lines
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG

CLAIMS = [
    {"claim": "batch norm helps", "param": "batch_norm", "treatment": [True], "control": [False], "expect": "higher"},
    {"claim": "dropout helps", "param": "dropout", "treatment": [0.5], "control": [0.0], "expect": "higher"},
    {
        "claim": "adam is faster",
        "param": "optimizer.name",
        "treatment": ["adam"],
        "control": ["sgd"],
        "measure": "val_accuracy@1",
        "expect": "higher",
    },
    {"claim": "batch norm hurts", "param": "batch_norm", "treatment": [True], "control": [False], "expect": "lower"},
    {
        "claim": "batch norm helps (unadjusted)",
        "param": "batch_norm",
        "treatment": [True],
        "control": [False],
        "expect": "higher",
        "adjust": False,
    },
]


def record_sweep(uri: str, name: str, configs: int, repeats: int = 2, asha: bool = True, seed: int = 0) -> str:
    """A finished sweep as the engine records it: batch_norm adds 0.10 to val_accuracy, dropout
    nothing, Adam learns faster early on; ASHA (grace 1, factor 3, 9 epochs) stopped the weak."""
    rng = random.Random(seed)
    client = MlflowClient(uri)
    experiment = client.create_experiment(name)
    spec = {
        "name": name,
        "metric": "val_accuracy",
        "mode": "max",
        "budget": {"trials": configs, "max_epochs": 9},
        "scheduler": {"type": "asha", "grace_epochs": 1, "reduction_factor": 3} if asha else {"type": "none"},
        "repeats": repeats,
        "claims": CLAIMS,
    }
    parent = client.create_run(experiment, run_name=f"{name}-parent", tags={SWEEP_TAG: "parent"}).info.run_id
    spec_file = Path(client.get_run(parent).info.artifact_uri.removeprefix("file://")) / "spec"
    spec_file.mkdir(parents=True)
    (spec_file / "resolved_spec.yaml").write_text(yaml.safe_dump(spec))
    for c in range(configs):
        params = {
            "batch_norm": c % 2 == 0,
            "dropout": [0.0, 0.5][(c // 2) % 2],
            "optimizer.name": ["adam", "sgd"][(c // 4) % 2],
            "optimizer.lr": 10 ** rng.uniform(-4, -1),
        }
        base = 0.6 + (0.10 if params["batch_norm"] else 0.0)
        for r in range(repeats):
            epochs = 9 if not asha or c % 3 == 0 else [1, 3][c % 2]
            status = "completed" if epochs == 9 else "stopped_by_asha"
            run = client.create_run(
                experiment,
                run_name=f"trial-{c * repeats + r:05d}",
                tags={PARENT_TAG: parent, TRIAL_TAG: f"t{c}_{r}", SWEEP_TAG: "child"},
            ).info.run_id
            metrics = []
            for e in range(1, epochs + 1):
                speed = 0.9 if params["optimizer.name"] == "adam" else 0.75
                acc = base * (1 - (1 - speed) ** e) + rng.gauss(0, 0.01)
                metrics += [
                    Metric("val_accuracy", acc, 0, e),
                    Metric("train_loss", 1.0 / e, 0, e),
                    Metric("val_loss", 1.2 / e + 0.02 * e, 0, e),
                ]
            client.log_batch(
                run,
                metrics=metrics,
                params=[Param(k, "null" if v is None else str(v)) for k, v in {**params, "seed": r}.items()],
                tags=[RunTag(STATUS_TAG, status), RunTag("tricksweep.epochs", str(epochs))],
            )
            client.set_terminated(run)
    client.set_terminated(parent)
    return parent


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, new_store):
    folder = tmp_path_factory.mktemp("report")
    uri = new_store(folder)
    parent = record_sweep(uri, "synthetic", configs=24)
    report = build_report(uri, "synthetic", folder / "out")
    return uri, parent, report, folder / "out"


def test_leaderboard_ranks_configurations_by_their_mean_over_repeats(recorded):
    _, _, report, out = recorded
    board = report.leaderboard
    assert len(board) == 24 and all(len(row.trials) == 2 for row in board)
    means = [row.mean for row in board]
    assert means == sorted(means, reverse=True)
    assert all(row.params["batch_norm"] is True for row in board[:3])
    assert board[0].spread > 0
    header = (out / "leaderboard.csv").read_text().splitlines()[0]
    assert header.startswith("rank,mean,spread,repeats,epochs,statuses")


def test_effects_find_the_planted_effect_and_no_effect_where_there_is_none(recorded):
    _, _, report, _ = recorded
    lines = effect_lines(report.effects, "val_accuracy")
    bn = next(line for line in lines if line.startswith("batch_norm="))
    assert ("batch_norm=True: +" in bn and bn.endswith("helps (vs the other option)")) or (
        "batch_norm=False: -" in bn and "hurts" in bn
    ), bn
    bn_effect = next(e for e in report.effects if e.trick == "batch_norm" and e.option == "True")
    # ASHA sweep: compared at the first rung (epoch 1), where batch norm is worth 0.1 x Adam's/SGD's progress.
    assert 0.05 < bn_effect.diff < 0.1 and bn_effect.diff_ci[0] > 0
    dropout = next(line for line in lines if line.startswith("dropout="))
    assert "no detectable effect" in dropout
    assert any(
        e.trick == "optimizer.lr" and e.option.startswith("<") for e in report.effects
    )  # a continuous trick: in bins
    assert "first ASHA rung" in report.effects_note


def test_importance_and_claims(recorded):
    _, _, report, out = recorded
    assert set(report.importance) >= {"batch_norm", "optimizer.name"}
    assert max(report.importance, key=report.importance.get) in ("optimizer.name", "batch_norm")
    verdicts = {c.claim: c.verdict for c in report.claims}
    assert verdicts == {
        "batch norm helps": "supported",
        "dropout helps": "inconclusive",
        "adam is faster": "supported",
        "batch norm hurts": "not supported",
        "batch norm helps (unadjusted)": "supported",
    }
    assert "pts [" in report.claims[0].measured()
    # The other tricks as covariates take their noise out (here: the optimizer's speed at epoch 1).
    adjusted, plain = report.claims[0], report.claims[4]
    assert adjusted.ci[1] - adjusted.ci[0] < 0.8 * (plain.ci[1] - plain.ci[0])
    assert abs(adjusted.effect - plain.effect) < 0.03
    assert (out / "claims.csv").read_text().count("\n") == 6


def test_plots_and_html_are_files_and_parent_artifacts(recorded):
    uri, parent, report, out = recorded
    assert set(report.plots) == {"learning_curves", "losses", "effects", "asha_rungs"}, report.plot_errors
    for path in report.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    for part in ("Leaderboard", "Claims", "Per-trick effects", "Importance", "data:image/png;base64,"):
        assert part in html
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/leaderboard.csv", "report/effects.csv", "report/plots"} <= logged
    assert {a.path for a in client.list_artifacts(parent, "report/plots")} >= {
        "report/plots/effects.png",
        "report/plots/asha_rungs.png",
    }


def test_cli_report_prints_tables_and_writes_the_folder(recorded, tmp_path, capsys):
    uri, _, _, _ = recorded
    assert main(["report", "synthetic", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "top 10 of 24 configurations by mean val_accuracy" in out
    assert "batch_norm=" in out and "claims" in out and "supported" in out
    assert (tmp_path / "r" / "report.html").exists() and not (tmp_path / "r" / "plots").exists()


def test_unknown_sweep_lists_the_sweeps_found(recorded, capsys):
    uri, _, _, _ = recorded
    assert main(["report", "synthetc", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no sweep of that name" in err and "did you mean 'synthetic'" in err and "sweeps found: synthetic" in err


def test_few_trials_still_give_a_leaderboard_but_no_effects(tmp_path, tracking_uri, capsys):
    uri = tracking_uri
    record_sweep(uri, "tiny", configs=2, repeats=1, asha=False)
    assert main(["report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "top 2 of 2 trials" in out  # no repeats: one trial per configuration
    assert "effects not estimable: 2 finished trials (need at least 5)" in out
    assert "too few configurations" in out  # the claims say why they are inconclusive
    html = (tmp_path / "r" / "report.html").read_text()
    assert "&plusmn;" not in html and "±" not in out  # ± sd only where a configuration has repeats


def test_the_page_shows_mean_and_sd_for_configurations_with_repeats(recorded):
    _, _, _, out = recorded
    leaderboard_html = (out / "report.html").read_text().split("<h2>Leaderboard")[1].split("</table>")[0]
    assert leaderboard_html.count("&plusmn;") >= 2 and "<th>repeats</th>" in leaderboard_html

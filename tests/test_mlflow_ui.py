"""The MLflow UI in a real browser: a finished sweep's parent run nests its trials, a trial charts
its metrics by epoch, the report is among the parent's artifacts, and the link `run` prints opens
the sorted training runs, from which the registered best model and its alias are reached.

Headless Chromium from Debian's `chromium` package driven by PyPI's `playwright` (no `playwright
install`: nothing is downloaded). Missing either is a failure that says how to install it, not a
skip: `.ci/run` installs both. Screenshots land in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port, write_spec

from tricksweep.report import build_report
from tricksweep.runner import run_sweep
from tricksweep.spec import load_spec

CHROMIUM = os.environ.get("TRICKSWEEP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "test-artifacts"


@contextlib.contextmanager
def browser_page(sync_playwright: Any) -> Iterator[Any]:
    """A page of headless chromium at 1500x1000; on a failure, a screenshot of it in test-artifacts/."""
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        except Exception:
            page.screenshot(path=str(SHOTS / "mlflow_ui_failure.png"))
            raise
        finally:
            browser.close()
SWEEP = """\
name: ui_sweep
metric: val_accuracy
mode: max
budget: {trials: 3, max_epochs: 3}
scheduler: {type: asha, grace_epochs: 1, reduction_factor: 2}
repeats: 2
seed: 3
space:
  model: {name: mlp, width: 16, depth: 1}
  batch_size: 256
  batch_norm: {choice: [false, true]}
  optimizer: {name: adam, lr: {loguniform: [1.0e-3, 1.0e-2]}}
"""

pytestmark = pytest.mark.scenario  # a sweep, an mlflow server and a browser


def _browser_tools():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the MLflow UI test needs PyPI's playwright: pip install -e '.[test]'", pytrace=False)
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"the MLflow UI test needs Chromium at {CHROMIUM}: apt-get update && apt-get install -y chromium "
            "(or set TRICKSWEEP_CHROMIUM)",
            pytrace=False,
        )
    return sync_playwright


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    sync_playwright = _browser_tools()  # fail before spending a sweep on it
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    outcome = run_sweep(
        load_spec(write_spec(folder, SWEEP)), tracking_uri=uri, storage=str(folder / "runs"), echo=lambda _: None
    )
    report = build_report(uri, "ui_sweep", folder / "report")
    assert {"learning_curves", "asha_rungs"} <= set(report.plots), report.plot_errors
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            uri,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not come up: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
    yield base, outcome, report, sync_playwright
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def test_sweep_in_the_mlflow_ui(server):
    base, outcome, report, sync_playwright = server
    with browser_page(sync_playwright) as page:
        page.goto(f"{base}/#/experiments")
        # MLflow 3 opens in its GenAI view; sweeps are training runs.
        page.get_by_text("Model training", exact=True).click()
        page.get_by_role("link", name="ui_sweep", exact=True).click()

        # The parent run expands to its nested child runs, one per trial.
        parent_name = _parent_run_name(outcome)
        parent = page.get_by_role("link", name=parent_name, exact=True)
        parent.wait_for()
        page.locator("[role=gridcell]", has=parent).locator(
            "button[data-component-id*='runnamecellrenderer']"
        ).click()
        children = page.get_by_role("link", name="trial-")
        children.first.wait_for()
        assert children.count() == len(outcome.trials) == 6
        page.screenshot(path=str(SHOTS / "mlflow_ui_runs.png"))

        # A child run charts its metrics with step = epoch.
        children.first.click()
        page.get_by_role("tab", name="Model metrics").click()
        page.get_by_text("Step", exact=True).first.wait_for()  # an x axis drawn: the charts loaded
        body = page.inner_text("main")
        for metric in ("val_accuracy", "train_loss", "val_loss"):
            assert metric in body, metric
        assert page.get_by_text("Step", exact=True).count() >= 3  # every chart is by step, the epoch
        page.screenshot(path=str(SHOTS / "mlflow_ui_child_metrics.png"))

        # The parent's artifacts hold the report page and its plots.
        page.go_back()
        page.go_back()
        page.get_by_role("link", name=parent_name, exact=True).click()
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("report", exact=True).first.click()
        page.get_by_text("report.html", exact=True).wait_for()
        for name in ("leaderboard.csv", "effects.csv", "plots"):
            assert page.get_by_text(name, exact=True).count() >= 1, name
        page.get_by_text("plots", exact=True).first.click()
        for name in report.plots:  # 3 configurations: too few for effect bars, so not all four
            page.get_by_text(f"{name}.png", exact=True).wait_for()
        page.get_by_text("report.html", exact=True).click()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SHOTS / "mlflow_ui_parent_artifacts.png"))


def test_the_printed_link_opens_the_sorted_training_runs_and_the_model(server):
    """The link `run` prints opens the model-training view with the runs sorted by the sweep's
    metric; the experiment carries the model-training kind; the parent run shows the registered
    model, whose page shows the `best` alias."""
    from mlflow.tracking import MlflowClient

    base, outcome, _, sync_playwright = server
    client = MlflowClient(outcome.tracking_uri)
    assert client.get_experiment(outcome.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert str(client.get_model_version_by_alias("ui_sweep", "best").run_id) == outcome.parent_run_id
    with browser_page(sync_playwright) as page:
        page.goto(outcome.ui_url.replace("http://127.0.0.1:5000", base))
        page.get_by_text("Sort: val_accuracy", exact=True).wait_for()
        # The model-training view's sidebar (GenAI's has Traces, Judges, Prompts... instead).
        page.get_by_role("link", name="Model registry").wait_for()
        page.get_by_role("link", name=_parent_run_name(outcome), exact=True).wait_for()
        page.screenshot(path=str(SHOTS / "mlflow_ui_sorted_runs.png"))

        page.get_by_role("link", name=_parent_run_name(outcome), exact=True).click()
        page.get_by_text("Registered models", exact=True).first.wait_for()
        # The version's link (the experiment's breadcrumb has the same name, ui_sweep).
        version_link = page.locator("a[href*='/models/ui_sweep/versions/1']").first
        version_link.wait_for()
        page.screenshot(path=str(SHOTS / "mlflow_ui_parent_registered_model.png"))
        version_link.click()
        page.wait_for_url("**/models/ui_sweep/versions/1**")
        page.get_by_text("Aliases", exact=False).first.wait_for()
        page.wait_for_timeout(1000)
        text = page.inner_text("main")
        assert "best" in text.split(), text[:1500]  # the alias, on the version's page
        page.screenshot(path=str(SHOTS / "mlflow_ui_model_version.png"))


def _parent_run_name(outcome) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(outcome.tracking_uri).get_run(outcome.parent_run_id).info.run_name


def test_the_report_page_fits_a_laptop_screen(server):
    """report.html at 1366 x 768 scrolls down, never sideways, whatever the number of swept tricks."""
    _, _, report, sync_playwright = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto((report.out / "report.html").as_uri())
            page.get_by_role("heading", name="Leaderboard", exact=False).wait_for()
            page.screenshot(path=str(SHOTS / "report_laptop.png"), full_page=True)
            widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"
            assert "±" in page.inner_text("table")  # this sweep has repeats: mean ± sd
        finally:
            browser.close()

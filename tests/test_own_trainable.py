"""Your own training code by import string: a plain function and a module with a pydantic Config,
from a project outside the package (examples/own_trainable, copied to a temporary folder and run
from there), on real Ray with ASHA, recorded in MLflow; the contract every trainable meets; and
user code that does not meet it failing in one line before Ray starts."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, TESTS, write_spec
from mlflow.tracking import MlflowClient

from trainables.contract import load
from trainables.report import ListReport, TrialInfo
from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG, TRIAL_TAG

EXAMPLE = ROOT / "examples" / "own_trainable"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example project copied out of the repository, as the current folder: its code is
    found only through the spec's folder and the cwd."""
    folder = tmp_path / "own_trainable"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def check_recorded(uri: str, outcome, metric: str, trials: int, epochs: int) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([outcome.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == outcome.parent_run_id]
    assert len(children) == trials == len(outcome.trials)
    statuses = {c.data.tags[STATUS_TAG] for c in children}
    assert statuses <= {"completed", "stopped_by_asha"} and "stopped_by_asha" in statuses, statuses
    for child in children:
        n = int(child.data.tags["tricksweep.epochs"])
        assert child.data.tags[STATUS_TAG] != "completed" or n == epochs
        assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == list(range(1, n + 1))
        assert "seed" in child.data.params and "hidden" in child.data.params
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[f"best_{metric}"] == pytest.approx(outcome.best_value)
    best = client.get_run(parent.data.tags["tricksweep.best_run_id"])
    assert best.data.tags[TRIAL_TAG] == outcome.best.trial_id


def test_a_function_of_your_own_is_swept_with_asha_and_recorded(ray_local, project: Path, new_store):
    from tricksweep import run_sweep

    uri = new_store(project)  # a copy of a migrated store: MLflow's migrations cost about 1.5 CPU-s
    # The example's whole budget (6 trials x 4 epochs): ASHA must stop at least one trial (seed 0).
    outcome = run_sweep("sweeps/function.yaml", tracking_uri=uri, echo=lambda _: None)
    assert outcome.errors == 0
    assert outcome.best_value > 0.5  # digits: a 4-epoch MLP learns something
    assert set(outcome.best_config) == {"hidden", "lr", "seed"}
    check_recorded(uri, outcome, "val_accuracy", trials=6, epochs=4)


@pytest.mark.slow
def test_a_module_with_a_config_is_swept_through_the_cli(ray_local, project: Path, capsys, new_store):
    uri = new_store(project)
    # --smoke (2 trials x 2 epochs, ASHA kept): the module, its Config and the CLI are the subject here;
    # ASHA's stops and complete records are asserted on the function's sweep above.
    assert main(["run", "sweeps/module.yaml", "--smoke", "--tracking-uri", uri, "--no-report"]) == 0
    client = MlflowClient(uri)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("own_module").experiment_id], filter_string="tags.`tricksweep.sweep` = 'parent'"
    )
    assert parent.data.tags["tricksweep.trainable"] == "own_mlp.configured"
    assert str(project / "sweeps") in parent.data.tags["tricksweep.code_paths"].split(os.pathsep)
    children = client.search_runs([parent.info.experiment_id], filter_string="tags.`tricksweep.sweep` = 'child'")
    assert len(children) == 2
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha"}
    assert all(0.5 <= float(c.data.params["momentum"]) <= 0.95 for c in children)
    assert "best val_loss:" in capsys.readouterr().out


# -- the contract, for every kind of trainable -------------------------------------------------

CONTRACT_CASES = {
    "classifier": ("classifier", {"model": {"name": "mlp", "width": 8}, "batch_size": 256}),
    "function": ("own_mlp.fit:fit", {"hidden": 8, "lr": 0.1}),
    "module": ("own_mlp.configured", {"hidden": 8, "lr": 0.1}),
}


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_every_kind_of_trainable_trains_reports_and_resumes(case, project: Path, monkeypatch, one_thread):
    from trainables import TRAINABLES

    name, sampled = CONTRACT_CASES[case]
    monkeypatch.syspath_prepend(str(project))
    trainable = load(TRAINABLES.get(name, name))
    info = TrialInfo(epochs=2, seed=3, data={"name": "digits", "val_fraction": 0.2})
    config = trainable.make_config(sampled, info)  # what run_trial hands to train
    assert isinstance(config, dict) == (case == "function")

    first = ListReport(info=info)
    trainable.train(config, first)
    assert first.epochs == [1, 2] and len(first.checkpoints) == 2
    assert "val_accuracy" in first.records[-1]
    if trainable.metrics is not None:
        assert set(trainable.metrics) <= set(first.records[-1])

    resumed = ListReport(resume_from=first.checkpoints[0], info=info)
    trainable.train(trainable.make_config(sampled, info), resumed)
    assert resumed.epochs == [2]  # epoch 1 came from the checkpoint
    assert resumed.records[0]["val_accuracy"] == pytest.approx(first.records[1]["val_accuracy"], abs=1e-6)


def test_a_config_gets_only_the_engine_fields_it_declares(project: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    info = TrialInfo(epochs=7, seed=5, device="cpu", checkpoint_every=2, data={"name": "digits"})
    classifier = load("trainables.classifier").make_config({}, info)
    assert (classifier.epochs, classifier.seed, classifier.checkpoint_every) == (7, 5, 2)
    own = load("own_mlp.configured").make_config({"hidden": 4}, info)  # extra="forbid": nothing else may arrive
    assert own.model_dump() == {"hidden": 4, "lr": 0.05, "momentum": 0.9}
    assert load("own_mlp.fit:fit").make_config({"lr": 0.1}, info) == {"lr": 0.1}


# -- the metric check --------------------------------------------------------------------------


def test_a_metric_the_module_does_not_declare_is_rejected_at_validation(project: Path, capsys):
    text = Path("sweeps/module.yaml").read_text().replace("metric: val_loss", "metric: accuracy")
    spec = write_spec(project / "sweeps", text, "bad_metric.yaml")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: metric = 'accuracy': unknown metric") and err.endswith("val_accuracy, val_loss")


def test_a_metric_a_function_never_reports_fails_its_trial_at_the_first_report(ray_local, project: Path, new_store):
    from tricksweep import run_sweep

    # The engine's check is the subject, not the training: a function of the user's reporting what
    # own_mlp.fit:fit reports, without torch (its worker costs about 2 CPU-s instead of 7).
    shutil.copy(TESTS / "own_light_fit.py", project / "own_light_fit.py")
    uri = new_store(project)
    spec = {
        "name": "no_such_metric",
        "trainable": "own_light_fit:fit",
        "metric": "accuracy",
        "mode": "max",
        "budget": {"trials": 1, "max_epochs": 1},
        "scheduler": {"type": "none"},
        "space": {"hidden": 8, "lr": 0.1},
    }
    outcome = run_sweep(spec, tracking_uri=uri, echo=lambda _: None)  # a dict: looked up from the cwd
    assert outcome.errors == 1 and [t.status for t in outcome.trials] == ["failed"]
    client = MlflowClient(uri)
    [child] = [r for r in client.search_runs([outcome.experiment_id]) if r.data.tags.get(PARENT_TAG)]
    error = child.data.tags["tricksweep.error"]
    assert error.startswith("ValueError: metric 'accuracy' was not reported; reported: val_accuracy, val_loss")


# -- user code that does not meet the contract -------------------------------------------------

BROKEN = {
    "no_train.py": "def fit(config, report):\n    pass\n",
    "one_arg.py": "def train(config):\n    pass\n",
    "bad_import.py": "import no_such_dependency_xyz\n",
    "not_a_model.py": "Config = dict\n\ndef train(config, report):\n    pass\n",
}
BAD_TRAINABLES = [
    ("no_such_pkg.train", r"trainable = 'no_such_pkg.train': no module named 'no_such_pkg' in .*own_trainable"),
    (
        "own_mlp.fit:fitt",
        r"trainable = 'own_mlp.fit:fitt': module 'own_mlp.fit' has no attribute 'fitt' "
        r"\(did you mean 'fit'\?\)",
    ),
    ("own_mlp", r"trainable = 'own_mlp': module 'own_mlp' has no function train\(config, report\)"),
    ("no_train", r"trainable = 'no_train': module 'no_train' has no function train\(config, report\)"),
    ("one_arg", r"trainable = 'one_arg': train\(config\) cannot be called as train\(config, report\)"),
    (
        "own_mlp.fit:train_mlp",
        r"trainable = 'own_mlp.fit:train_mlp': train_mlp\(\*, hidden: 'int', lr: 'float', "
        r"momentum: 'float', report\) cannot be called as train\(config, report\)",
    ),
    (
        "bad_import",
        r"trainable = 'bad_import': importing 'bad_import' failed: ModuleNotFoundError: "
        r"No module named 'no_such_dependency_xyz'",
    ),
    ("not_a_model", r"trainable = 'not_a_model': not_a_model.Config is a type, not a pydantic model"),
    ("own_mlp.fit:", r"trainable = 'own_mlp.fit:': expected 'package.module' or 'package.module:function'"),
    ("clasifier", r"trainable = 'clasifier': unknown trainable \(did you mean 'classifier'\?\); registered: "),
]


@pytest.mark.parametrize(("trainable", "expected"), BAD_TRAINABLES, ids=[t for t, _ in BAD_TRAINABLES])
def test_user_code_that_does_not_meet_the_contract_fails_in_one_line(trainable, expected, project: Path, capsys):
    import ray

    ray_was_up = ray.is_initialized()
    for name, text in BROKEN.items():
        (project / name).write_text(text)
    spec = write_spec(
        project / "sweeps",
        f"name: broken\ntrainable: {trainable!r}\nmetric: val_accuracy\n"
        "mode: max\nbudget: {trials: 1, max_epochs: 1}\n",
        "broken.yaml",
    )
    for command in ("validate", "run"):
        assert main([command, str(spec)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and re.fullmatch(f"error: {expected}.*", err), err
    assert ray.is_initialized() == ray_was_up  # run stopped before Ray


@pytest.mark.slow
def test_the_readme_example_runs(ray_local, project: Path, new_store):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own model, data and training code") : readme.index("## On a Ray cluster")]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    # A migrated store where the example's default one goes (./mlflow.db), as after a user's first sweep:
    # MLflow's migrations cost about 1.5 CPU-s (creating the default store: tests/test_cli.py).
    uri = new_store(project)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example, run as a user would
    outcome = namespace["outcome"]
    assert outcome.errors == 0 and outcome.best_value > 0.5
    assert outcome.best_config["hidden"] in (8, 64)
    assert outcome.tracking_uri == uri == f"sqlite:///{project / 'mlflow.db'}"
    assert MlflowClient(uri).get_run(outcome.parent_run_id).data.tags["tricksweep.trainable"] == "own_mlp.fit:fit"

"""Bad input: one line naming the field, the value and the rule; exit code 2; nothing recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tricksweep.cli import main

BASE = """\
name: bad
metric: val_accuracy
mode: max
budget: {trials: 2, max_epochs: 3}
"""


def check(user_folder: Path, text: str, capsys, *expected: str, command: str = "validate") -> str:
    path = user_folder / "sweeps" / "bad.yaml"
    path.write_text(text)
    code = main([command, str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    return err


CASES = {
    "unknown key": (BASE + "schedular: {type: asha}\n", ["schedular", "unknown key", "did you mean 'scheduler'"]),
    "wrong type": (BASE.replace("trials: 2", "trials: many"), ["budget.trials", "'many'", "valid integer"]),
    "dropout outside [0, 1)": (
        BASE + "space: {dropout: {uniform: [0.2, 1.2]}}\n",
        ["space.dropout", "1.2", "less than 1"],
    ),
    "lr <= 0 on a log scale": (
        BASE + "space: {optimizer: {name: adam, lr: {loguniform: [0, 0.1]}}}\n",
        ["space.optimizer.lr.loguniform low", "= 0", "> 0 on a log scale"],
    ),
    "low > high": (
        BASE + "space: {dropout: {uniform: [0.5, 0.1]}}\n",
        ["space.dropout.uniform", "[0.5, 0.1]", "low <= high"],
    ),
    "unknown optimizer": (
        BASE + "space: {optimizer: {choice: [sgd, adamx]}}\n",
        ["space.optimizer.name", "'adamx'", "did you mean 'adam'", "sgd_momentum"],
    ),
    "unknown init": (BASE + "space: {init: xavir}\n", ["space.init.name", "'xavir'", "did you mean 'xavier'", "zeros"]),
    "unknown trainable": (BASE + "trainable: clasifier\n", ["trainable", "'clasifier'", "did you mean 'classifier'"]),
    "unknown dataset": (BASE + "dataset: {name: digit}\n", ["dataset.name", "'digit'", "did you mean 'digits'"]),
    "unknown fragment": (
        BASE + "include: [optimiser]\n",
        ["include", "'optimiser'", "did you mean 'optimizer'", "augmentation"],
    ),
    "unknown metric": (
        BASE.replace("metric: val_accuracy", "metric: val_acc"),
        ["metric", "'val_acc'", "did you mean 'val_accuracy'"],
    ),
    "grace epochs > max epochs": (
        BASE + "scheduler: {type: asha, grace_epochs: 5}\n",
        ["scheduler.grace_epochs = 5", "<= budget.max_epochs (3)"],
    ),
    "reduction factor < 2": (
        BASE + "scheduler: {type: asha, reduction_factor: 1}\n",
        ["scheduler.reduction_factor = 1", "greater than or equal to 2"],
    ),
    "momentum on adam": (
        BASE + "space: {optimizer: {choice: [{name: adam, momentum: 0.9}]}}\n",
        ["space.optimizer.momentum", "0.9", "'adam' does not take 'momentum'", "beta1"],
    ),
    "grid over a continuous range": (
        BASE + "searcher: grid\nspace: {optimizer: {name: adam, lr: {loguniform: [1.0e-4, 1.0e-2]}}}\n",
        ["space.optimizer.lr", "searcher 'grid' cannot enumerate", "loguniform"],
    ),
    "unknown key in an option block": (
        BASE + "space: {early_stopping: {patience: 3, min_detla: 0.1}}\n",
        ["space.early_stopping.min_detla", "did you mean 'min_delta'"],
    ),
    "engine-owned key in the space": (BASE + "space: {epochs: 5}\n", ["space.epochs", "set by the engine"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_spec_is_one_line_with_exit_2(user_folder, capsys, case):
    text, expected = CASES[case]
    check(user_folder, text, capsys, *expected)


def test_empty_file(user_folder, capsys):
    check(user_folder, "", capsys, "bad.yaml", "empty")


def test_invalid_yaml_names_the_line(user_folder, capsys):
    check(user_folder, BASE + "space:\n  dropout: [0.1\n  batch_norm: true\n", capsys, "invalid YAML", "line 7")


def test_key_defined_twice_in_one_file(user_folder, capsys):
    check(
        user_folder, BASE + "space: {dropout: 0.1}\nspace: {dropout: 0.2}\n", capsys, "key 'space' defined twice",
        "line 6",
    )


def test_not_a_mapping(user_folder, capsys):
    check(user_folder, "- just\n- a list\n", capsys, "must be a YAML mapping")


def test_fragment_key_defined_twice(user_folder, capsys):
    (user_folder / "search_spaces" / "more_dropout.yaml").write_text("dropout: {choice: [0.1, 0.3]}\n")
    check(
        user_folder,
        BASE + "include: [regularization, more_dropout]\n",
        capsys,
        "'dropout'",
        "both fragments 'regularization' and 'more_dropout'",
    )


def test_override_of_a_fragment_parameter_is_allowed(user_folder, capsys):
    path = user_folder / "sweeps" / "ok.yaml"
    path.write_text(BASE + "include: [regularization]\nspace: {dropout: 0.25, early_stopping: {patience: 2}}\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dropout: 0.25" in out and "patience: 2" in out and "min_delta: 0.001" in out


def test_missing_file(user_folder, capsys):
    assert main(["validate", str(user_folder / "sweeps" / "nope.yaml")]) == 2
    assert "no such sweep spec file" in capsys.readouterr().err


def test_failed_validation_writes_nothing(user_folder, capsys):
    check(user_folder, BASE + "space: {optimizer: {name: adam, momentum: 0.9}}\n", capsys, "momentum", command="run")
    assert not (user_folder / "mlflow.db").exists()
    assert not (user_folder / "runs").exists()
    assert not (user_folder / "mlruns").exists()


def test_console_script_exit_code_and_no_traceback(user_folder):
    path = user_folder / "sweeps" / "bad.yaml"
    path.write_text(BASE + "budget: {trials: 0, max_epochs: 3}\n")
    tricksweep = Path(sys.executable).with_name("tricksweep")
    done = subprocess.run([str(tricksweep), "validate", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]

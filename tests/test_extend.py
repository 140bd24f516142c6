"""``tricksweep extend NAME [SPEC]``: a finished sweep continued under a new parent run of the same
experiment, linked to the one it extends; no configuration of the lineage runs again; TPE is told
the earlier trials before its first suggestion; metric, mode and trainable cannot change.

Two real sweeps on the session Ray (1-epoch trials, registry off): a random one over a small
discrete space (4 configurations) extended with a widened int range (6), and a TPE one extended by
2 trials. The subject is the orchestration, not training: the trainable is tests/light_trainable.py
(no torch; its val_accuracy a fixed function of the configuration)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from tricksweep import search
from tricksweep.cli import main
from tricksweep.extend import plan_extension
from tricksweep.records import EXTENDS_TAG, LINEAGE_TAG, load_sweep
from tricksweep.runner import run_sweep
from tricksweep.searchers import PRIOR_ATTR, config_key
from tricksweep.tracking import ParentRun

RANDOM = "grow-random"
TPE = "grow-tpe"
LIGHT = "light_trainable"


def spec(name: str, searcher: str, width: dict | int, trials: int) -> dict:
    return {
        "name": name,
        "trainable": LIGHT,
        "metric": "val_accuracy",
        "mode": "max",
        "budget": {"trials": trials, "max_epochs": 1},
        "scheduler": {"type": "none"},
        "searcher": searcher,
        "resources": {"cpu": 1},
        "registry": False,
        "space": {
            "model": {"name": "cnn", "width": width},
            "optimizer": {"name": "adam", "lr": {"loguniform": [1.0e-3, 3.0e-2]} if searcher == "optuna_tpe" else 0.01},
            "dropout": {"choice": [0.0, 0.2]},
        },
    }


def keys(trials) -> list[tuple]:
    return [config_key({k: v for k, v in t.params.items()}) for t in trials]


@pytest.fixture(scope="module")
def store(ray_local, tmp_path_factory, new_store):
    """Two finished sweeps: random (3 trials of 4 configurations) and TPE (3 trials)."""
    folder = tmp_path_factory.mktemp("extend")
    uri = new_store(folder)
    for name, searcher, width in ((RANDOM, "random", {"int": [4, 5]}), (TPE, "optuna_tpe", 4)):
        outcome = run_sweep(spec(name, searcher, width, 3), tracking_uri=uri, storage=str(folder / "runs"),
                            echo=lambda _: None)
        assert outcome.status == "completed", outcome.error
    return {"folder": folder, "uri": uri}


def test_widened_range_never_repeats_a_configuration(store, capsys):
    """4 configurations ran 3 trials; the widened space has 6: 3 new trials must be 3 of the
    configurations not run yet (3 unchecked draws from 6 would hit a run one about 9 times in 10)."""
    uri, folder = store["uri"], store["folder"]
    before = load_sweep(uri, RANDOM)
    wider = folder / "sweeps" / "wider.yaml"
    wider.parent.mkdir(exist_ok=True)
    wider.write_text(yaml.safe_dump(spec(RANDOM, "random", {"int": [4, 6]}, 3)))
    assert main(["extend", RANDOM, str(wider), "--tracking-uri", uri, "--no-report"]) == 0
    out = capsys.readouterr().out

    lineage = load_sweep(uri, RANDOM, lineage=True)
    old = [t for t in lineage.trials if t.name.startswith("g0/")]
    new = [t for t in lineage.trials if t.name.startswith("g1/")]
    assert len(old) == len(before.trials) == 3 and len(new) == 3
    assert not set(keys(new)) & set(keys(old))  # no configuration of the lineage again
    assert len(set(keys(new))) == 3  # nor one of the new trials twice
    assert {t.params["model.width"] for t in new} <= {4, 5, 6}
    assert {t.params["seed"] for t in new}.isdisjoint({t.params["seed"] for t in old})  # new seeds
    assert "changed: space.model.width: " in out and "best val_accuracy" in out

    # The new parent run links to the one it extends; the lineage lists it.
    parent = ParentRun.latest(uri, RANDOM)
    tags = parent.client.get_run(parent.run_id).data.tags
    assert tags[EXTENDS_TAG] == before.parent_run_id
    assert tags[LINEAGE_TAG] == before.parent_run_id
    assert lineage.lineage == [before.parent_run_id, parent.run_id]

    # The report over the lineage names each trial's run.
    assert main(["report", RANDOM, "--lineage", "--no-plots", "--tracking-uri", uri, "--out", str(folder / "r")]) == 0
    out = capsys.readouterr().out
    assert f"{RANDOM} (lineage of 2 runs): top 6 of 6 trials" in out and "g1/trial-" in out and "g0/trial-" in out


def test_a_longer_budget_tells_tpe_the_earlier_trials_as_pruned(store):
    """With --max-epochs 3, trials that ran their whole 1-epoch budget fell short of the new one:
    TPE is told them as pruned at epoch 1 (ranked below any trial that runs 3), not as complete."""
    recorded = load_sweep(store["uri"], TPE)
    plan = plan_extension(store["uri"], TPE, trials=1, max_epochs=3)
    assert plan.loaded.spec.budget.max_epochs == 3
    values = {f"g0/{t.name}": t.best("val_accuracy", "max")[0] for t in recorded.trials}
    assert {p.source: (p.state, p.curve) for p in plan.history.priors} == {
        name: ("PRUNED", {1: value}) for name, value in values.items()}


def test_tpe_is_told_the_earlier_trials_before_its_first_suggestion(store):
    """The searcher an extend builds: its Optuna study holds the 3 earlier trials, as complete
    trials with their recorded best values, before it suggests anything."""
    uri = store["uri"]
    recorded = load_sweep(uri, TPE)
    plan = plan_extension(uri, TPE, trials=1)
    searcher, _, param_space = search.build(plan.loaded.space, plan.loaded.spec, plan.history)
    searcher.set_search_properties("val_accuracy", "max", param_space)
    study = searcher.inner._ot_study
    told = {t.user_attrs[PRIOR_ATTR]: t for t in study.trials}
    assert len(study.trials) == 3 and set(told) == {f"g0/{t.name}" for t in recorded.trials}
    for trial in recorded.trials:
        assert told[f"g0/{trial.name}"].state.name == "COMPLETE"
        assert told[f"g0/{trial.name}"].value == trial.best("val_accuracy", "max")[0]
        assert told[f"g0/{trial.name}"].params["optimizer.lr"] == trial.params["optimizer.lr"]
    config = searcher.suggest("t-new")
    assert len(study.trials) == 4 and study.trials[-1].number == 3  # the first new one, after the told ones
    assert config_key(config) not in {config_key(dict(t.params)) for t in recorded.trials}


def test_tpe_extend_runs_exactly_n_trials_from_a_warm_study(store, capsys):
    """A real extend by 2 trials: 2 new child runs under a new parent run; the searcher state Tune
    saved shows the 3 earlier trials told before the new ones."""
    uri = store["uri"]
    first = ParentRun.latest(uri, TPE).run_id
    assert main(["extend", TPE, "--trials", "2", "--tracking-uri", uri, "--no-report"]) == 0
    capsys.readouterr()
    parent = ParentRun.latest(uri, TPE)
    assert parent.run_id != first
    assert len(parent.children()) == 2
    tags = parent.client.get_run(parent.run_id).data.tags
    assert tags[EXTENDS_TAG] == first
    [state] = sorted(Path(tags["tricksweep.storage_path"]).glob("searcher-state-*.pkl"))[-1:]
    saved = pickle.loads(state.read_bytes())
    study = saved["inner"]._ot_study
    assert [PRIOR_ATTR in t.user_attrs for t in study.trials] == [True] * 3 + [False] * 2
    assert saved["priors_told"] == 3


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("metric", "val_loss", "metric = 'val_loss': sweep 'grow-tpe' ran with metric = 'val_accuracy'; "),
    ("mode", "min", "mode = 'min': sweep 'grow-tpe' ran with mode = 'max'; "),
    ("trainable", "failing_trainable",
     f"trainable = 'failing_trainable': sweep 'grow-tpe' ran with trainable = '{LIGHT}'; "),
])
def test_a_fixed_field_changed_is_one_line(store, capsys, tmp_path, field, value, rule):
    changed = spec(TPE, "optuna_tpe", 4, 3)
    changed[field] = value
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert main(["extend", TPE, str(path), "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {rule}"), err
    assert "Traceback" not in err


def test_unknown_or_running_sweep_is_one_line(store, capsys):
    uri = store["uri"]
    assert main(["extend", "grow-nothing", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: sweep = 'grow-nothing': no sweep of that name in ")

    parent = ParentRun.latest(uri, RANDOM)
    parent.client.update_run(parent.run_id, status="RUNNING")
    try:
        assert main(["extend", RANDOM, "--tracking-uri", uri]) == 2
    finally:
        parent.client.update_run(parent.run_id, status="FINISHED")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is still RUNNING; extend continues a completed sweep" in err, err


def handed_out(searcher: str, trials: int, ran: set[tuple]) -> tuple[list[tuple], int]:
    """The trials an extend's variant generator hands out over a 6-point space (width 4..6 x
    dropout 0, 0.2), without running them; and how many draws it dropped as already run."""
    from ray.tune.experiment import Experiment

    from tricksweep.searchers import History
    from tricksweep.spec import load_spec

    loaded = load_spec({**spec("grow-points", searcher, {"int": [4, 6]}, trials), "registry": False})
    search_alg, num_samples, param_space = search.build(loaded.space, loaded.spec, History(set(ran), [], 7))
    search_alg.add_configurations([Experiment("points", lambda config: None, config=param_space,
                                              num_samples=num_samples)])
    out = []
    while (trial := search_alg.next_trial()) is not None:
        out.append(config_key(trial.config))
    return out, search_alg.skipped


def point(width: int, dropout: float) -> tuple:
    return config_key({"model": {"name": "cnn", "width": width}, "optimizer": {"name": "adam", "lr": 0.01},
                       "dropout": dropout})


def test_grid_extend_runs_only_the_points_not_run():
    ran = {point(4, 0.0), point(5, 0.2)}
    out, skipped = handed_out("grid", 1, ran)
    assert sorted(out) == sorted({point(w, d) for w in (4, 5, 6) for d in (0.0, 0.2)} - ran) and skipped == 2


def test_random_extend_draws_until_it_finds_configurations_not_run():
    """2 of the 6 points left: asked for 4 trials it hands out exactly those 2 (then it has drawn
    all it may and stops), never one already run and never one twice."""
    ran = {point(w, d) for w in (4, 5) for d in (0.0, 0.2)}
    out, skipped = handed_out("random", 4, ran)
    assert sorted(out) == sorted([point(6, 0.0), point(6, 0.2)]) and skipped > 0

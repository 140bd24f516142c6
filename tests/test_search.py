"""Searchers: Optuna TPE over the DSL (conditional blocks), repeats, the epoch budget, and what
Optuna is told about trials ASHA stopped."""

from __future__ import annotations

import optuna
import pytest
from conftest import write_spec
from mlflow.tracking import MlflowClient

from tricksweep import space as dsl
from tricksweep.errors import SpecError
from tricksweep.runner import run_sweep
from tricksweep.searchers import OptunaRepeats, repeat_seeds
from tricksweep.spec import load_spec
from tricksweep.tracking import PARENT_TAG

SPACE = {
    "optimizer": {
        "choice": [
            {"name": "adam", "lr": {"loguniform": [1.0e-4, 1.0e-2]}},
            {"name": "sgd_momentum", "lr": {"loguniform": [1.0e-3, 0.2]}, "momentum": {"uniform": [0.8, 0.99]}},
        ]
    },
    "init": {"choice": ["xavier", "he"]},
    "batch_norm": {"choice": [False, True]},
    "model": {"name": "mlp", "width": {"int": [8, 16]}, "depth": 1},
}


def sample(space: dict, seed: int, n: int, sampler=optuna.samplers.TPESampler) -> list[tuple[dict, dict]]:
    study = optuna.create_study(sampler=sampler(seed=seed))
    fn = dsl.DefineByRun(dsl.parse(space))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = fn(trial)
        study.tell(trial, 0.5)
        out.append((config, trial.params))
    return out


def test_choice_between_blocks_is_a_conditional_optuna_parameter():
    for config, params in sample(SPACE, seed=3, n=12):
        opt = config["optimizer"]
        assert params["optimizer"] == opt["name"]
        assert f"optimizer[{opt['name']}].lr" in params  # each block has its own lr range
        assert ("momentum" in opt) == (opt["name"] == "sgd_momentum")
        assert ("optimizer[sgd_momentum].momentum" in params) == (opt["name"] == "sgd_momentum")
        assert not any(k.startswith("optimizer[adam]") for k in params) or opt["name"] == "adam"
        assert config["model"] == {"name": "mlp", "width": config["model"]["width"], "depth": 1}
        assert 8 <= config["model"]["width"] <= 16
        low, high = (1e-4, 1e-2) if opt["name"] == "adam" else (1e-3, 0.2)
        assert low <= opt["lr"] <= high


def test_seeded_sampling_repeats():
    assert [c for c, _ in sample(SPACE, 5, 10)] == [c for c, _ in sample(SPACE, 5, 10)]
    assert [c for c, _ in sample(SPACE, 5, 10)] != [c for c, _ in sample(SPACE, 6, 10)]
    assert repeat_seeds(0, 3) == repeat_seeds(0, 3) and len(set(repeat_seeds(0, 3))) == 3


@pytest.mark.parametrize("searcher,repeats", [("optuna_tpe", 1), ("random", 2)])
def test_grid_values_rejected_where_optuna_samples(tmp_path, searcher, repeats):
    path = write_spec(
        tmp_path,
        f"""\
name: s
metric: val_accuracy
mode: max
budget: {{trials: 2, max_epochs: 2}}
searcher: {searcher}
repeats: {repeats}
space:
  batch_norm: {{grid: [false, true]}}
""",
    )
    with pytest.raises(SpecError, match=r"space\.batch_norm\.grid: searcher .* cannot enumerate grid values"):
        load_spec(path)


def test_grid_searcher_still_rejects_continuous_ranges(tmp_path):
    path = write_spec(
        tmp_path,
        "name: s\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 2}\n"
        "searcher: grid\nrepeats: 2\nspace:\n  dropout: {uniform: [0.0, 0.5]}\n",
    )
    with pytest.raises(SpecError, match="cannot enumerate a continuous"):
        load_spec(path)


def test_claims_name_parameters_of_the_space(tmp_path):
    path = write_spec(
        tmp_path,
        "name: s\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 2}\n"
        "space:\n  batch_norm: {choice: [false, true]}\n"
        "claims:\n  - {claim: bn helps, param: batchnorm, treatment: [true], control: [false], expect: higher}\n",
    )
    with pytest.raises(
        SpecError, match=r"claims\[0\]\.param = 'batchnorm': not a parameter.*did you mean 'batch_norm'"
    ):
        load_spec(path)


def _searcher(repeats: int) -> OptunaRepeats:
    s = OptunaRepeats(
        dsl.parse(SPACE),
        sampler="tpe",
        seed=0,
        seeds=repeat_seeds(0, repeats) if repeats > 1 else None,
        max_epochs=6,
        max_total_epochs=None,
    )
    s.set_search_properties("val_accuracy", "max", {})
    return s


def _run(s: OptunaRepeats, trial_id: str, epochs: int, values: list[float], end: str = "") -> None:
    for epoch, value in zip(range(1, epochs + 1), values):
        s.on_trial_result(trial_id, {"val_accuracy": value, "epoch": epoch})
    s.on_trial_complete(trial_id, {"val_accuracy": values[epochs - 1], "epoch": epochs, "end": end})


def test_asha_stopped_trials_are_pruned_not_complete():
    s = _searcher(repeats=2)
    configs = [s.suggest(f"t{i}") for i in range(4)]
    assert configs[0] == {**configs[1], "seed": configs[0]["seed"]} and configs[0]["seed"] != configs[1]["seed"]
    assert configs[2]["seed"] == configs[0]["seed"]  # every configuration runs the same seeds
    _run(s, "t0", 6, [0.5, 0.7, 0.8, 0.9, 0.85, 0.88])
    _run(s, "t1", 6, [0.5, 0.6, 0.8, 0.8, 0.95, 0.9])
    _run(s, "t2", 2, [0.3, 0.4])  # stopped by ASHA at epoch 2
    _run(s, "t3", 6, [0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    trials = s.inner._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert trials[0].value == pytest.approx((0.9 + 0.95) / 2)  # mean of each repeat's best epoch
    assert trials[1].intermediate_values == {1: pytest.approx(0.3), 2: pytest.approx(0.45)}


def test_early_stopped_is_complete_and_errors_fail():
    s = _searcher(repeats=1)
    s.suggest("a"), s.suggest("b")
    _run(s, "a", 3, [0.5, 0.6, 0.55], end="early_stopped")
    s.on_trial_complete("b", None, error=True)
    states = [t.state for t in s.inner._ot_study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


TPE_SWEEP = """\
name: tpe_repeats
metric: val_accuracy
mode: max
budget: {trials: 4, max_epochs: 3, max_total_epochs: 9}
scheduler: {type: none}
searcher: optuna_tpe
repeats: 2
seed: 1
registry: false
space:
  model: {name: mlp, width: 16, depth: 1}
  batch_size: 256
  optimizer:
    choice:
      - {name: adam, lr: {loguniform: [1.0e-3, 1.0e-2]}}
      - {name: sgd_momentum, lr: {loguniform: [1.0e-2, 0.2]}, momentum: {uniform: [0.8, 0.95]}}
"""


@pytest.mark.slow
def test_tpe_sweep_with_repeats_stops_launching_when_the_epoch_budget_is_spent(ray_local, tmp_path, tracking_uri):
    uri = tracking_uri
    outcome = run_sweep(
        load_spec(write_spec(tmp_path, TPE_SWEEP)),
        tracking_uri=uri,
        storage=str(tmp_path / "runs"),
        echo=lambda _: None,
    )
    assert outcome.errors == 0
    # 9 epochs = 3 trials of 3. The budget is checked before each new trial; the 2 running and the 1
    # queued when it ran out still finish: 5 trials at most, not the 8 of trials x repeats.
    assert 3 <= len(outcome.trials) <= 5
    assert sum(r.epochs for r in outcome.trials) >= 9
    client = MlflowClient(uri)
    children = client.search_runs(
        [outcome.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'"
    )
    by_config: dict[str, list[str]] = {}
    for child in children:
        params = dict(child.data.params)
        seed = params.pop("seed")
        by_config.setdefault(repr(sorted(params.items())), []).append(seed)
        assert ("optimizer.momentum" in params) == (params["optimizer.name"] == "sgd_momentum")
    assert all(len(set(seeds)) == len(seeds) for seeds in by_config.values())
    assert max(len(s) for s in by_config.values()) == 2  # a configuration ran with both seeds
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["tricksweep.searcher"] == "optuna_tpe" and parent.data.tags["tricksweep.repeats"] == "2"


def test_grid_repeats_are_one_more_grid_axis_and_random_keeps_ray_sampling(tmp_path):
    from tricksweep.search import build as build_search
    from tricksweep.searchers import BudgetedVariants

    text = (
        "name: s\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 2, max_total_epochs: 5}\n"
        "searcher: SEARCHER\nrepeats: REPEATS\nspace:\n  batch_norm: {choice: [false, true]}\n"
    )
    grid = load_spec(write_spec(tmp_path, text.replace("SEARCHER", "grid").replace("REPEATS", "3")))
    assert grid.trials_total == 6
    search_alg, num_samples, space = build_search(grid.space, grid.spec)
    assert isinstance(search_alg, BudgetedVariants) and search_alg.max_total_epochs == 5 and num_samples == 1
    assert space["seed"] == {"grid_search": repeat_seeds(0, 3)}
    plain = load_spec(write_spec(tmp_path, text.replace("SEARCHER", "random").replace("REPEATS", "1")))
    search_alg, num_samples, space = build_search(plain.space, plain.spec)
    assert isinstance(search_alg, BudgetedVariants) and not isinstance(space["seed"], dict)  # tune.randint, as before
    repeated = load_spec(write_spec(tmp_path, text.replace("SEARCHER", "random").replace("REPEATS", "2")))
    search_alg, num_samples, _ = build_search(repeated.space, repeated.spec)
    assert isinstance(search_alg, OptunaRepeats) and search_alg.sampler_name == "random" and num_samples == 2


def _contract_space(continuous: bool) -> dict:
    """A small conditional space: momentum exists only in the sgd_momentum block."""
    lr = {"loguniform": [1.0e-3, 1.0e-1]} if continuous else {"choice": [0.001, 0.01]}
    momentum = {"uniform": [0.8, 0.9]} if continuous else {"choice": [0.8, 0.9]}
    return {
        "optimizer": {"choice": [{"name": "adam", "lr": lr}, {"name": "sgd_momentum", "lr": lr, "momentum": momentum}]},
        "model": {"name": "mlp", "width": {"int": [8, 9]}, "depth": 1},
    }


def _score(config: dict) -> None:
    from ray import tune

    for epoch in (1, 2):
        tune.report({"score": config["optimizer"]["lr"] * epoch + config["model"]["width"], "epoch": epoch, "end": ""})


@pytest.mark.parametrize("name", sorted(__import__("tricksweep.search", fromlist=["SEARCHERS"]).SEARCHERS))
def test_every_registered_searcher_runs_a_conditional_space(name, ray_local, tmp_path):
    """The registry's contract: each searcher runs the trials validate promises, over a space with
    conditional blocks, every config shaped as its block says and inside its ranges."""
    import yaml
    from ray import tune

    from tricksweep import search

    entry = search.SEARCHERS[name]
    data = {
        "name": "contract",
        "metric": "val_accuracy",
        "mode": "max",
        "searcher": name,
        "budget": {"trials": 1 if entry.enumerates_ranges else 4, "max_epochs": 2},
        "space": _contract_space(entry.continuous),
    }
    loaded = load_spec(write_spec(tmp_path, yaml.safe_dump(data)))
    search_alg, num_samples, param_space = search.build(loaded.space, loaded.spec)
    tuner = tune.Tuner(
        _score,
        param_space=param_space,
        # reuse_actors: a new actor is a new worker process importing this module (Ray's default: up
        # to 12 of them here); the searcher's contract is the same on 2 reused ones.
        tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg, num_samples=num_samples,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name=name, verbose=0),
    )
    results = list(tuner.fit())
    assert len(results) == loaded.trials_total  # what `validate` promises
    for result in results:
        assert result.error is None, result.error
        config = result.config
        optimizer = config["optimizer"]
        expected = {"name", "lr"} | ({"momentum"} if optimizer["name"] == "sgd_momentum" else set())
        assert set(optimizer) == expected, config
        assert 1.0e-3 <= optimizer["lr"] <= 1.0e-1 and 0.8 <= optimizer.get("momentum", 0.8) <= 0.9
        assert config["model"]["width"] in (8, 9) and isinstance(config["seed"], int)
    if entry.enumerates_ranges:  # 2 blocks: adam x 2 lrs, sgd_momentum x 2 lrs x 2 momenta; x 2 widths
        assert len({repr(r.config) for r in results}) == (2 + 4) * 2 == loaded.trials_total


def test_a_spec_naming_an_unknown_searcher_is_told_the_registered_ones(tmp_path):
    text = "name: s\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 1}\nsearcher: gird\n"
    with pytest.raises(
        SpecError, match=r"searcher = 'gird': unknown searcher \(did you mean 'grid'\?\); valid: random, grid"
    ):
        load_spec(write_spec(tmp_path, text))

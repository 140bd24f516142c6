"""The search-space DSL compiles to Ray Tune domains that Ray's own variant generator resolves."""

from __future__ import annotations

import numpy as np
import pytest
from ray.tune.search.sample import Domain
from ray.tune.search.variant_generator import generate_variants

from tricksweep import search
from tricksweep import space as dsl
from tricksweep.errors import SpecError

OPTIMIZER = {
    "optimizer": {
        "choice": [
            {"name": "adam", "lr": {"loguniform": [1e-4, 1e-2]}},
            {"name": "sgd_momentum", "lr": {"loguniform": [1e-3, 0.3]}, "momentum": {"uniform": [0.8, 0.99]}},
        ]
    },
    "dropout": {"choice": [0.0, 0.5]},
    "model": {"name": "mlp", "width": {"int": [4, 6]}},
}


def sample(raw: dict, n: int, seed: int = 0, grid: bool = False) -> list[dict]:
    compiled = dsl.to_tune(dsl.parse(raw), enumerate_ranges=grid)
    rng = np.random.RandomState(seed)
    return [config for _ in range(n) for _, config in generate_variants(compiled, random_state=rng)]


def leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    else:
        yield value


def test_conditional_blocks_resolve_fully_and_only_active_parameters_exist():
    configs = sample(OPTIMIZER, 60)
    assert not any(isinstance(v, Domain) for c in configs for v in leaves(c))
    by_name = {}
    for config in configs:
        by_name.setdefault(config["optimizer"]["name"], []).append(config["optimizer"])
    assert set(by_name) == {"adam", "sgd_momentum"}
    assert all(set(o) == {"name", "lr"} and 1e-4 <= o["lr"] <= 1e-2 for o in by_name["adam"])
    assert all(set(o) == {"name", "lr", "momentum"} and 0.8 <= o["momentum"] <= 0.99 for o in by_name["sgd_momentum"])


def test_integer_bounds_are_inclusive_at_both_ends():
    widths = {c["model"]["width"] for c in sample(OPTIMIZER, 200)}
    assert widths == {4, 5, 6}


def test_same_seed_same_configs_other_seed_other_configs():
    assert sample(OPTIMIZER, 10, seed=3) == sample(OPTIMIZER, 10, seed=3)
    assert sample(OPTIMIZER, 10, seed=3) != sample(OPTIMIZER, 10, seed=4)


def test_grid_values_expand_and_are_counted():
    raw = {
        "batch_norm": {"grid": [False, True]},
        "dropout": {"grid": [0.0, 0.2, 0.4]},
        "init": {"choice": ["he", "xavier"]},
    }
    parsed = dsl.parse(raw)
    assert dsl.grid_points(parsed) == 6
    configs = sample(raw, 1)
    assert sorted((c["batch_norm"], c["dropout"]) for c in configs) == sorted(
        (b, d) for b in (False, True) for d in (0.0, 0.2, 0.4)
    )


def test_grid_searcher_enumerates_choices_blocks_and_int_ranges():
    raw = {
        "optimizer": {"choice": [{"name": "adam", "lr": {"choice": [1e-3, 1e-2]}}, {"name": "sgd", "lr": 0.1}]},
        "model": {"name": "mlp", "depth": {"int": [1, 2]}},
    }
    parsed = dsl.parse(raw)
    assert dsl.grid_points(parsed, enumerate_ranges=True) == 6  # (2 adam lrs + 1 sgd) x 2 depths
    configs = sample(raw, 1, grid=True)
    assert len(configs) == 6
    assert {(c["optimizer"]["name"], c["optimizer"]["lr"], c["model"]["depth"]) for c in configs} == {
        (n, lr, d) for n, lr in (("adam", 1e-3), ("adam", 1e-2), ("sgd", 0.1)) for d in (1, 2)
    }


def test_grid_searcher_rejects_continuous_ranges_with_the_reason():
    with pytest.raises(SpecError, match=r"space.optimizer\[0\].lr: searcher 'grid' cannot enumerate"):
        search.check_space(dsl.parse(OPTIMIZER), "grid")


def test_corners_cover_every_option_and_both_ends():
    values = list(dsl.corners(dsl.parse(OPTIMIZER)))
    optimizers = [v["optimizer"] for v in values]
    assert {"name": "adam", "lr": 1e-4} in optimizers and {"name": "adam", "lr": 1e-2} in optimizers
    assert {"name": "sgd_momentum", "lr": 1e-3, "momentum": 0.99} in optimizers
    assert {v["dropout"] for v in values} == {0.0, 0.5}
    assert {v["model"]["width"] for v in values} == {4, 6}


def test_merge_overrides_leaves_and_merges_groups():
    base = {"augment": {"rotate": {"p": {"choice": [0, 0.5]}, "degrees": 10}}, "dropout": {"choice": [0.1, 0.2]}}
    merged = dsl.merge(base, {"augment": {"rotate": {"p": 1.0}}, "dropout": {"uniform": [0.0, 0.5]}})
    assert merged == {"augment": {"rotate": {"p": 1.0, "degrees": 10}}, "dropout": {"uniform": [0.0, 0.5]}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"x": {"choice": []}}, "space.x.choice = []: must be a non-empty list"),
        ({"x": {"uniform": [1]}}, "must be a list [low, high]"),
        ({"x": {"int": [1.5, 3]}}, "space.x.int low = 1.5: must be an integer"),
        ({"x": {"uniform": ["a", 1]}}, "must be a finite number"),
        ({"x": {"uniform": [2, 1]}}, "must be low <= high"),
    ],
)
def test_malformed_domains(raw, message):
    with pytest.raises(SpecError) as err:
        dsl.parse(raw)
    assert message in str(err.value)


def test_const_keeps_mappings_literal():
    parsed = dsl.parse({"x": {"const": {"choice": [1, 2]}}})
    assert dsl.to_tune(parsed) == {"x": {"choice": [1, 2]}}


def test_without_grids_keeps_options_but_samples_them():
    parsed = dsl.parse({"a": {"grid": [1, 2, 3]}, "b": {"choice": [{"x": {"grid": [4, 5]}}]}})
    flat = dsl.without_grids(parsed)
    assert dsl.grid_points(flat) == 1
    assert flat["a"].options == parsed["a"].options and not flat["a"].grid

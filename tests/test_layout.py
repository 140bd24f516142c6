"""The engine's layout stays a DAG: each module imports only the layers below it (lazy imports
inside functions count too), the report path never imports Ray, and a Ray worker imports the
worker side only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "src" / "tricksweep"

# Bottom to top. A module may import modules of lower layers only.
LAYERS = [
    {"errors"},
    # shipping: the user's code on a cluster (workers use it too); scaffold: tricksweep init
    # gpu: GPU memory sizes, the devices nodes advertise, a trial's memory given back, NVML sampling
    {"space", "asha", "shipping", "scaffold", "gpu"},
    {"search"},  # the searcher registry
    {"spec"},
    {"trial"},  # the worker side
    {"tracking"},  # MLflow write side: the parent run, tags, the store
    {"writer", "records"},  # the background child-run writer; the MLflow read side
    {"leaderboard"},
    {"analysis"},
    {"plots"},
    {"report"},
    # driver side: storage, tracking, dataset and weights checked before Ray starts; the best model
    # logged, registered, its alias moved (MLflow + torch, no Ray)
    # a recorded trial trained again in this process and compared (MLflow + torch, no Ray)
    {"preflight", "registry", "rerun"},
    # driver side: weights shipped to nodes; Ray/Optuna search algorithms; GPU memory shares and OOM retries
    {"sources", "searchers", "gpu_shares"},
    {"callbacks"},  # Tune callbacks
    {"runner"},  # the driver
    {"extend"},  # tricksweep extend: a finished sweep continued through the driver, its lineage read back
    {"jobs"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# The MLflow read side and what is built on it, down to the write side it reads through.
REPORT_PATH = {"report", "plots", "analysis", "leaderboard", "records", "tracking", "writer"}


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(tricksweep modules, other top-level packages) that ``path`` imports anywhere in it."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + (
                [f"{node.module}.{a.name}" for a in node.names] if node.module == "tricksweep" else []
            )
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "tricksweep":
                theirs.add(parts[0])
            elif len(parts) > 1 and (PACKAGE / f"{parts[1]}.py").exists():
                ours.add(parts[1])
    return ours, theirs


GRAPH = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_engine_module_has_a_layer():
    assert set(GRAPH) == set(LAYER), "add new modules to LAYERS (and README's Layout)"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    upward = {m for m in GRAPH[module][0] if LAYER[m] >= LAYER[module] and m != module}
    assert not upward, f"{module} (layer {LAYER[module]}) imports {sorted(upward)} from its own layer or above"


def test_the_report_path_never_imports_ray():
    for module in REPORT_PATH:
        assert "ray" not in GRAPH[module][1], f"{module} imports ray"
        assert GRAPH[module][0] <= REPORT_PATH | {"errors", "space", "asha", "spec", "search"}, module


def python(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


# The engine modules a trial imports: the trial function and where the user's shipped code is.
WORKER_SIDE = {"tricksweep", "tricksweep.trial", "tricksweep.shipping", "tricksweep.errors", "tricksweep.gpu"}
# What the driver and the report need and a trial does not (Ray itself brings rich and pandas).
HEAVY = ("mlflow", "optuna", "matplotlib", "sklearn")


def test_importing_the_worker_side_stays_light():
    loaded = python("import json, sys, tricksweep.trial; print(json.dumps(sorted(sys.modules)))")
    assert {m for m in loaded if m.startswith("tricksweep")} == WORKER_SIDE
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)


def test_importing_the_report_does_not_start_ray_or_torch():
    loaded = python("import json, sys, tricksweep.report; print(json.dumps(sorted(sys.modules)))")
    assert not {m.split(".")[0] for m in loaded} & {"ray", "torch"}


def test_a_trial_in_a_real_worker_imports_only_the_worker_side(ray_local, tmp_path):
    from ray import tune

    from tricksweep.trial import TrialContext, run_trial

    ctx = TrialContext(module="modules_probe_trainable", cpus=1, gpus=0)
    tuner = tune.Tuner(
        tune.with_parameters(run_trial, ctx=ctx),
        param_space={"seed": 0},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe", verbose=0),
    )
    [result] = list(tuner.fit())
    assert result.error is None, result.error
    loaded = json.loads(result.metrics["modules"])
    assert {m for m in loaded if m.startswith("tricksweep")} == WORKER_SIDE
    assert not {m.split(".")[0] for m in loaded} & {*HEAVY, "torch"}  # torch: only a trainable that uses it
    assert result.metrics["torch_threads"] == 1  # the trial's 1 CPU, though torch loaded after the engine


def test_the_suites_file_order_names_existing_files():
    # A misspelt or renamed file would silently drop out of the order the two xdist workers follow.
    from conftest import FILE_ORDER, TESTS

    assert len(set(FILE_ORDER)) == len(FILE_ORDER)
    assert [name for name in FILE_ORDER if not (TESTS / name).is_file()] == []

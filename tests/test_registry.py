"""The sweep's best model in MLflow's registry: registered at the end of a run, its alias moved only
on improvement, loadable in a fresh process with MLflow and torch alone, served over HTTP.

Three smoke sweeps (2 trials x 2 epochs) of one name share a store: a poor one (zeros init),
a good one (He init: the alias moves), a poor one again (the alias stays, and it says so)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from trainables.data import Digits, load
from tricksweep.registry import register_best
from tricksweep.runner import run_sweep

NAME = "quickstart-like"


def spec(init: str) -> dict:
    return {
        "name": NAME,
        "trainable": "classifier",
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "metric": "val_accuracy",
        "mode": "max",
        "budget": {"trials": 2, "max_epochs": 2},
        "scheduler": {"type": "none"},
        "space": {
            "model": {"name": "cnn", "width": 8},
            "optimizer": {"name": "adam", "lr": 0.01},
            "init": init,
            "batch_norm": {"choice": [False, True]},
        },
    }


def sweep(folder: Path, uri: str, init: str) -> tuple[object, str]:
    """A smoke sweep; what it printed (the registry's line goes to stdout)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        outcome = run_sweep(spec(init), smoke_test=True, tracking_uri=uri, storage=str(folder / "runs"),
                            echo=lambda _: None)
    return outcome, printed.getvalue()


@pytest.fixture(scope="module")
def store(ray_local, tmp_path_factory, new_store):
    folder = tmp_path_factory.mktemp("registry")
    uri = new_store(folder)
    poor, poor_said = sweep(folder, uri, "zeros")
    good, good_said = sweep(folder, uri, "he")
    return {"folder": folder, "uri": uri, "poor": (poor, poor_said), "good": (good, good_said)}


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def validation_split():
    split = load(Digits(val_fraction=0.2))
    return split.x_val.numpy(), split.y_val.numpy()


def recorded_accuracy(uri: str) -> tuple[float, dict[str, str]]:
    """The val_accuracy the best version's trial recorded at its epoch, and the version's tags."""
    mlflow = client(uri)
    version = mlflow.get_model_version_by_alias(NAME, "best")
    tags = version.tags
    history = mlflow.get_metric_history(tags["tricksweep.child_run_id"], "val_accuracy")
    return next(m.value for m in history if m.step == int(tags["tricksweep.epoch"])), tags


@pytest.mark.slow
def test_alias_moves_only_on_improvement(store, capsys):
    uri = store["uri"]
    poor, poor_said = store["poor"]
    good, good_said = store["good"]
    assert good.best_value > poor.best_value + 0.2  # zeros init cannot break the symmetry
    assert f"registered {NAME} version 1 as models:/{NAME}@best" in poor_said
    assert f"registered {NAME} version 2 as models:/{NAME}@best" in good_said
    mlflow = client(uri)
    assert str(mlflow.get_model_version_by_alias(NAME, "best").version) == "2"

    worse, said = sweep(store["folder"], uri, "zeros")
    assert worse.best_value < good.best_value
    lines = [line for line in said.splitlines() if NAME in line]
    assert lines == [f"registered {NAME} version 3 (val_accuracy {worse.best_value:.4f}); alias 'best' stays on "
                     f"version 2 (val_accuracy {good.best_value:.4f}): this sweep did not do better"]
    assert str(mlflow.get_model_version_by_alias(NAME, "best").version) == "2"

    # The version carries its lineage; the model is an output of the parent run.
    tags = mlflow.get_model_version(NAME, "2").tags
    assert tags["tricksweep.sweep"] == NAME
    assert tags["tricksweep.parent_run_id"] == good.parent_run_id == mlflow.get_model_version(NAME, "2").run_id
    assert tags["tricksweep.trial"] == good.best.trial_id
    assert tags["tricksweep.child_run_id"] == mlflow.search_runs(
        [good.experiment_id], f"tags.`tricksweep.trial_id` = '{good.best.trial_id}'")[0].info.run_id
    assert tags["tricksweep.epoch"] == str(good.leaderboard[0].best_epoch)
    assert float(tags["tricksweep.metric_value"]) == good.best_value
    assert (tags["tricksweep.metric"], tags["tricksweep.mode"]) == ("val_accuracy", "max")
    assert len(tags["tricksweep.spec_hash"]) == 16
    assert "tricksweep.git_commit" in tags
    assert mlflow.get_run(good.parent_run_id).data.tags["tricksweep.registered_model"] == f"{NAME}/2"
    # The logged model belongs to the sweep's experiment (its files under the sweep's artifact root),
    # not to MLflow's Default experiment in ./mlruns of whatever folder the sweep ran from.
    source = mlflow.get_model_version(NAME, "2").source
    assert source.startswith("models:/m-"), source
    logged = mlflow.get_logged_model(source.removeprefix("models:/"))
    assert logged.experiment_id == good.experiment_id
    assert logged.artifact_location.startswith(mlflow.get_experiment(good.experiment_id).artifact_location)
    # A second `register` of the same sweep registers nothing new.
    assert register_best(uri, good.parent_run_id, echo=lambda _: None).version == "2"
    assert len(mlflow.search_model_versions(f"name = '{NAME}'")) == 3


LOAD_AND_PREDICT = textwrap.dedent("""
    import json, sys
    import mlflow, numpy as np
    model = mlflow.pyfunc.load_model(sys.argv[1])
    probabilities = model.predict(np.load(sys.argv[2]).astype("float32"))
    np.save(sys.argv[3], probabilities)
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"tricksweep", "trainables", "ray"})))
""")


@pytest.mark.slow
def test_loaded_model_predicts_the_recorded_accuracy(store, tmp_path):
    """A fresh process with MLflow and torch only: raw uint8-range pixels in, the trial's accuracy out."""
    x_val, y_val = validation_split()
    np.save(tmp_path / "x.npy", x_val)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, f"models:/{NAME}@best", str(tmp_path / "x.npy"),
         str(tmp_path / "p.npy")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # loading needed no tricksweep code
    probabilities = np.load(tmp_path / "p.npy")
    assert probabilities.shape == (len(y_val), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float((probabilities.argmax(axis=1) == y_val).mean())
    recorded, tags = recorded_accuracy(store["uri"])
    print(f"loaded models:/{NAME}@best (trial {tags['tricksweep.trial']}, epoch {tags['tricksweep.epoch']}): "
          f"accuracy {accuracy:.6f} over {len(y_val)} validation images, recorded {recorded:.6f}")
    assert accuracy == pytest.approx(recorded, abs=1e-6)


@pytest.mark.scenario
def test_served_model_answers_a_post_of_raw_digits(store, tmp_path):
    x_val, y_val = validation_split()
    port = free_port()
    # `mlflow models serve` execs `uvicorn` through bash: the venv's bin folder must be on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": path}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@best", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert server.poll() is None, server.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not answer /ping within 180 s"
                time.sleep(1)
        # Raw digits as a user has them: integers 0..255, one 1x8x8 image each.
        body = json.dumps({"inputs": x_val.astype(int).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and its workers
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    probabilities = np.asarray(answer["predictions"])
    assert probabilities.shape == (len(y_val), 10)
    accuracy = float((probabilities.argmax(axis=1) == y_val).mean())
    recorded, _ = recorded_accuracy(store["uri"])
    print(f"served models:/{NAME}@best: accuracy {accuracy:.6f} over {len(y_val)} posted digits, "
          f"recorded {recorded:.6f}")
    assert accuracy == pytest.approx(recorded, abs=1e-6)


def test_registry_false_and_own_code_register_nothing(tmp_path, new_store, monkeypatch):
    """``registry: false`` is a spec switch; a user's own trainable is skipped with one line."""
    from tricksweep.registry import after_sweep
    from tricksweep.spec import load_spec
    from tricksweep.tracking import start_parent

    example = Path(__file__).resolve().parent.parent / "examples" / "own_trainable"
    monkeypatch.chdir(example)
    uri = new_store(tmp_path)
    said: list[str] = []
    own = load_spec(example / "sweeps" / "function.yaml")
    parent = start_parent(own, uri=uri, run_name="own", storage_path=str(tmp_path), smoke=True)
    parent.finish("completed", {"tricksweep.best_trial": "x_00000"})
    assert after_sweep(uri, parent.run_id, echo=said.append) is None
    assert len(said) == 1
    assert said[0].startswith(f"model not registered: trainable {own.spec.trainable!r} is your own code")

    off = load_spec({**spec("he"), "registry": False})
    assert off.spec.registry is None
    parent = start_parent(off, uri=uri, run_name="off", storage_path=str(tmp_path), smoke=True)
    parent.finish("completed", {})
    said.clear()
    assert after_sweep(uri, parent.run_id, echo=said.append) is None
    assert said == []


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({"alias": "latest"}, "registry.alias"),
        ({"alias": "v2"}, "registry.alias"),
        ({"alias": "two words"}, "registry.alias"),
        ({"modle": "x"}, "registry.modle"),
    ],
)
def test_bad_registry_settings_are_one_line(registry, message):
    from tricksweep.errors import SpecError
    from tricksweep.spec import load_spec

    with pytest.raises(SpecError) as err:
        load_spec({**spec("he"), "registry": registry})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("model", ["cnn", "mlp", "resnet", "resnet18"])
def test_every_model_exports_with_its_preprocessing(model):
    """Every classifier model survives torch.export (the pt2 format the registry logs) with a
    dynamic batch, and the exported program computes what the eager module does."""
    import torch

    from trainables.classifier import Config
    from tricksweep.registry import BUILDERS

    cfg = Config.model_validate({"model": {"name": model}, "batch_norm": True})
    net = cfg.model.build((1, 8, 8), 10, cfg.batch_norm, cfg.dropout)
    served = BUILDERS["trainables.classifier"]({"model": {"name": model}, "batch_norm": True, "seed": 3},
                                               {"model": net.state_dict()})
    exported = torch.export.export(served.module, (torch.from_numpy(served.example),),
                                   dynamic_shapes=[{0: torch.export.Dim.AUTO}])
    images = torch.from_numpy(validation_split()[0][:5]).float()
    with torch.no_grad():
        np.testing.assert_allclose(exported.module()(images).numpy(), served.module(images).numpy(), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.slow
def test_register_command_on_a_finished_sweep(store, capsys):
    from tricksweep.cli import main

    assert main(["register", NAME, "--tracking-uri", store["uri"]]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"already registered: {NAME} version ")  # the latest sweep's version, kept
    assert main(["register", NAME, "--tracking-uri", store["uri"], "--alias", "latest"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --alias = 'latest': Value error, "
                                               "MLflow reserves `latest` and `v<number>` as aliases")

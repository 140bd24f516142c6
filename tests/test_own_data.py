"""Your own data: dataset factories by import string from a project outside the package
(examples/own_data, copied to a temporary folder and run from there) swept on real Ray with ASHA
(in smoke mode) and recorded in MLflow; image folders and a factory's Datasets streamed from disk giving the same
results as in memory; bad factory strings and keyword arguments failing in one line."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import synthetic_data
import torch
from conftest import ROOT, unregistered, write_spec
from mlflow.tracking import MlflowClient

from trainables import data
from trainables.classifier import Config, train
from trainables.report import ListReport
from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG

EXAMPLE = ROOT / "examples" / "own_data"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example project copied out of the repository, as the current folder and on sys.path
    (as the engine puts it for the driver and the workers)."""
    folder = tmp_path / "own_data"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in [m for m in sys.modules if m == "own_data" or m.startswith("own_data.")]:
        monkeypatch.delitem(sys.modules, name)  # a previous test's copy of the project
    return folder


@pytest.fixture(autouse=True)
def fresh_cache():
    data.load.cache_clear()
    data._read.cache_clear()
    data._scan.cache_clear()
    yield
    data.load.cache_clear()


def swept(project: Path, new_store, sweep: str) -> tuple[object, list]:
    from tricksweep import run_sweep

    uri = new_store(project)  # a copy of a migrated store: MLflow's migrations cost about 1.5 CPU-s
    # Smoke mode, as `tricksweep run --smoke` (2 trials x 2 epochs, ASHA kept): the factory's data
    # reaching every trial is the subject; more trials or epochs would only train longer.
    outcome = run_sweep(unregistered(f"sweeps/{sweep}"), smoke_test=True, tracking_uri=uri, echo=lambda _: None)
    client = MlflowClient(uri)
    children = [r for r in client.search_runs([outcome.experiment_id]) if r.data.tags.get(PARENT_TAG)]
    return outcome, children


def test_a_factory_returning_tensors_is_swept_with_asha_and_recorded(ray_local, project: Path, new_store):
    outcome, children = swept(project, new_store, "tensors.yaml")
    assert outcome.errors == 0 and len(children) == 2
    assert outcome.best_value > 0.3  # digits, 2 epochs of a width-8 CNN: well above chance (0.1; 0.65 seen)
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha"}
    assert {c.data.params["data.seed"] for c in children} <= {"0", "1"}  # a factory keyword argument, swept


@pytest.mark.slow
def test_a_factory_returning_datasets_is_streamed_in_a_sweep(ray_local, project: Path, new_store):
    outcome, children = swept(project, new_store, "datasets.yaml")
    assert outcome.errors == 0 and len(children) == 2
    assert outcome.best_value > 0.2  # twice chance (0.68 seen)
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha"}


# -- the contract, without Ray -----------------------------------------------------------------


def records(options: dict, **config) -> list[dict]:
    report = ListReport()
    train(Config(data=options, model={"name": "cnn", "width": 4}, epochs=2, **config), report)
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in report.records]


AUGMENT = {"rotate": {"p": 0.5}, "crop": {"p": 0.5}, "noise": {"p": 0.5}}


def test_factory_tensors_reach_the_classifier_with_every_trick(project: Path, one_thread):
    options = {"name": "own_data.data:digits", "val_fraction": 0.3}
    split = data.load(Config(data=options).data)
    assert isinstance(split, data.Split) and split.classes == 10 and split.shape == (1, 8, 8)
    assert len(split.y_val) == int(1797 * 0.3)
    got = records(options, batch_norm=True, dropout=0.2, augment=AUGMENT, normalize=True)
    assert len(got) == 2 and got[1]["train_loss"] < got[0]["train_loss"]  # it learns


def test_factory_datasets_give_the_same_results_streamed_and_in_memory(project: Path, one_thread):
    options = {"name": "own_data.data:upscaled", "size": 12}
    in_memory = data.load(Config(data={**options, "stream": False}).data)
    streamed = data.load(Config(data={**options, "stream": True, "loader_workers": 2}).data)
    assert isinstance(in_memory, data.Split) and in_memory.x_train.dtype == torch.float32
    assert isinstance(streamed, data.Streamed) and streamed.classes == 10 and streamed.shape == (1, 12, 12)
    # 1437 training images: fewer than STATS_SAMPLE, so normalization sees them all either way.
    for tricks in ({}, {"augment": AUGMENT, "batch_norm": True}):
        expected = records({**options, "stream": False}, **tricks)
        assert records({**options, "stream": True, "loader_workers": 2}, **tricks) == expected


def test_image_folder_streams_png_files_with_the_in_memory_results(tmp_path: Path, one_thread):
    synthetic_data.write_image_folder(tmp_path, classes=3, n_per_class=12, size=10)
    options = {"name": "image_folder", "root": str(tmp_path), "size": 8, "channels": 3}
    streamed = data.load(Config(data={**options, "stream": True}).data)
    in_memory = data.load(Config(data={**options, "stream": False}).data)
    assert isinstance(streamed, data.Streamed) and isinstance(in_memory, data.Split)
    assert len(streamed.train) == len(in_memory.y_train) and streamed.classes == in_memory.classes == 3
    image, label = streamed.val[0]
    assert torch.equal(image, in_memory.x_val[0]) and label == in_memory.y_val[0]  # the same pixels, decoded alike
    for tricks in ({}, {"augment": AUGMENT, "dropout": 0.3}):
        expected = records({**options, "stream": False}, **tricks)
        for workers in (0, 2):
            assert records({**options, "stream": True, "loader_workers": workers}, **tricks) == expected


def test_a_streamed_trial_resumes_bit_for_bit(tmp_path: Path, one_thread):
    synthetic_data.write_image_folder(tmp_path, classes=3, n_per_class=12, size=10)
    config = Config(data={"name": "image_folder", "root": str(tmp_path), "size": 8, "stream": True},
                    model={"name": "cnn", "width": 4}, epochs=2, augment=AUGMENT, dropout=0.3)
    first = ListReport()
    train(config, first)
    resumed = ListReport(resume_from=first.checkpoints[0])
    train(config, resumed)
    assert resumed.epochs == [2]
    drop = {"epoch_time_s"}
    assert {k: v for k, v in resumed.records[0].items() if k not in drop} == {
        k: v for k, v in first.records[1].items() if k not in drop
    }


def test_auto_streams_only_what_exceeds_the_memory_budget(tmp_path: Path):
    budget = data.memory_budget()
    assert budget > 0
    assert not data.streams(None, budget) and data.streams(None, budget + 1)
    assert data.streams(True, 1) and not data.streams(False, budget * 10)
    synthetic_data.write_image_folder(tmp_path)
    assert isinstance(data.load(Config(data={"name": "image_folder", "root": str(tmp_path)}).data), data.Split)


def test_normalization_of_streamed_data_reads_a_bounded_sample(tmp_path: Path, monkeypatch):
    from trainables import classifier

    synthetic_data.write_image_folder(tmp_path, classes=3, n_per_class=12, size=8)
    split = data.load(Config(data={"name": "image_folder", "root": str(tmp_path), "stream": True}).data)
    monkeypatch.setattr(data, "STATS_SAMPLE", 7)

    def sample():
        batches = data.EpochBatches(len(split.train), 4)
        return classifier._stats_sample(split.loader(split.train, batches, pin=False), batches, torch.device("cpu"))

    assert sample().shape[0] == 7 and sample().dtype == torch.uint8
    assert torch.equal(sample(), sample())  # seeded: the same sample in every trial


def test_a_factory_that_breaks_the_contract_says_how_in_one_line(project: Path):
    (project / "bad_data.py").write_text(
        "import torch\n\ndef flat():\n"
        "    return (torch.zeros(4, 64), torch.zeros(4)), (torch.zeros(2, 64), torch.zeros(2))\n"
        "\ndef single():\n    return torch.zeros(4, 1, 8, 8)\n"
    )
    with pytest.raises(data.DataContractError, match=r"^bad_data:flat: train images are torch.float32 \(4, 64\); "
                       r"must be uint8 or float \(N, C, H, W\)$"):
        data.load(Config(data="bad_data:flat").data)
    with pytest.raises(data.DataContractError, match="must return \\(train, validation\\)"):
        data.load(Config(data="bad_data:single").data)


# -- bad factory strings and keyword arguments: one line, exit 2 -------------------------------

BAD_DATA = [
    ("{name: 'own_data.data:digit'}", r"dataset = .*: module 'own_data.data' has no attribute 'digit' "
     r"\(did you mean 'digits'\?\)"),
    ("{name: 'no_such_pkg.data:load'}", r"dataset = .*: no module named 'no_such_pkg' on the import path"),
    ("{name: 'own_data.data:digits', val_fration: 0.3}", r"dataset = .*: own_data.data:digits does not take "
     r"'val_fration' \(did you mean 'val_fraction'\?\); it takes: val_fraction, seed"),
    ("{name: 'own_data.data:upscaled', split_seed: 1}", r"dataset = .*: own_data.data:upscaled does not take "
     r"'split_seed': a factory returns its own train/validation split, so the engine's split options do not apply"),
    ("{name: 'own_data.data:digits', loader_workers: -1}", r"dataset.loader_workers = -1: Input should be "
     r"greater than or equal to 0"),
    ("{name: digit}", r"dataset.name = 'digit': unknown option \(did you mean 'digits'\?\); valid: digits, .*, "
     r"package.module:function"),
]


@pytest.mark.parametrize(("dataset", "expected"), BAD_DATA, ids=[d for d, _ in BAD_DATA])
def test_bad_factories_fail_validation_in_one_line(dataset, expected, project: Path, capsys):
    spec = write_spec(project / "sweeps", f"name: bad\ndataset: {dataset}\nmetric: val_accuracy\nmode: max\n"
                      "budget: {trials: 1, max_epochs: 1}\n", "bad.yaml")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.fullmatch(f"error: {expected}.*", err), err


def test_swept_factory_arguments_are_checked_against_its_signature(project: Path, capsys):
    text = Path("sweeps/datasets.yaml").read_text() + "  data:\n    sise: {choice: [8, 16]}\n"
    assert main(["validate", str(write_spec(project / "sweeps", text, "bad_space.yaml"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not take 'sise' (did you mean 'size'?)" in err and err.startswith(
        "error: space.data"), err
    good = Path("sweeps/datasets.yaml").read_text() + "  data:\n    size: {choice: [8, 16]}\n"
    assert main(["validate", str(write_spec(project / "sweeps", good, "good_space.yaml"))]) == 0

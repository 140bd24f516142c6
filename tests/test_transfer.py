"""Transfer learning: ``init: pretrained`` loads a source's weights, freezes the leading blocks
(weights and batch-norm statistics), re-creates the head for another class count; bad
combinations are rejected at validation; MLflow sources are resolved by the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_data
import torch
from conftest import TESTS, process_env, write_spec
from mlflow.tracking import MlflowClient

from trainables.classifier import CHECKPOINT_FILE, Config, train
from trainables.data import FilesUnavailable
from trainables.report import ListReport
from tricksweep.cli import main
from tricksweep.errors import SpecError
from tricksweep.sources import resolve_sources
from tricksweep.spec import load_spec
from tricksweep.tracking import SWEEP_TAG

MODEL = {"name": "cnn", "width": 8}
SOURCE_DATA = {"name": "digits", "classes": [0, 1, 2, 3, 4]}
TARGET_DATA = {"name": "digits", "classes": [5, 6, 7, 8, 9], "train_per_class": 20}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A real checkpoint: the test CNN with batch norm trained 2 epochs on digits 0-4."""
    report = ListReport()
    train(Config(data=SOURCE_DATA, model=MODEL, batch_norm=True, epochs=2), report)
    path = tmp_path_factory.mktemp("source") / CHECKPOINT_FILE
    path.write_bytes((Path(report.checkpoints[-1]) / CHECKPOINT_FILE).read_bytes())
    return str(path)


def transfer(source: str, epochs: int = 2, **init) -> tuple[dict, dict]:
    """Train on digits 5-9 from ``source``; the source's and the result's model state dicts."""
    report = ListReport()
    cfg = Config(
        data=TARGET_DATA,
        model=MODEL,
        batch_norm=True,
        epochs=epochs,
        init={"name": "pretrained", "source": source, **init},
    )
    train(cfg, report)
    after = torch.load(Path(report.checkpoints[-1]) / CHECKPOINT_FILE, weights_only=True)["model"]
    return torch.load(source, weights_only=True)["model"], after


def changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert keys
    return any(not torch.equal(before[k], after[k]) for k in keys)


@pytest.mark.parametrize(
    ("freeze", "frozen", "trained"),
    [
        ("all_but_head", ["blocks.0.", "blocks.1."], []),
        ("all_but_last_block", ["blocks.0."], ["blocks.1."]),
        (1, ["blocks.0."], ["blocks.1."]),
        ("none", [], ["blocks.0.", "blocks.1."]),
    ],
)
def test_frozen_blocks_keep_weights_and_batchnorm_statistics(source, freeze, frozen, trained):
    before, after = transfer(source, freeze=freeze)
    for prefix in frozen:  # weights, biases, running_mean / running_var: all as in the source
        assert not changed(before, after, prefix), prefix
    for prefix in trained:
        assert changed(before, after, prefix), prefix
    assert changed(before, after, "head.")


def test_head_is_recreated_for_another_class_count(source):
    report = ListReport()
    data = {"name": "digits", "classes": [5, 6, 7], "train_per_class": 20}
    train(
        Config(
            data=data,
            model=MODEL,
            batch_norm=True,
            epochs=2,
            init={"name": "pretrained", "source": source, "freeze": "all_but_head"},
        ),
        report,
    )
    after = torch.load(Path(report.checkpoints[-1]) / CHECKPOINT_FILE, weights_only=True)["model"]
    assert after["head.3.weight"].shape == (3, 16)


def test_same_class_count_keeps_the_head_unless_reset(source):
    # lr ~ 0: the weights after one epoch are the ones training started from.
    original = torch.load(source, weights_only=True)["model"]
    common = {
        "data": TARGET_DATA,
        "model": MODEL,
        "batch_norm": True,
        "epochs": 1,
        "optimizer": {"name": "sgd", "lr": 1e-12},
    }
    starts = []
    for reset in (False, True):
        report = ListReport()
        train(Config(**common, init={"name": "pretrained", "source": source, "reset_head": reset}), report)
        starts.append(torch.load(Path(report.checkpoints[-1]) / CHECKPOINT_FILE, weights_only=True)["model"])
    kept, reset = starts
    assert torch.allclose(kept["head.3.weight"], original["head.3.weight"])
    assert not torch.allclose(reset["head.3.weight"], original["head.3.weight"])
    assert torch.allclose(reset["blocks.0.0.weight"], original["blocks.0.0.weight"])


SPEC = """name: t
dataset: {name: digits, classes: [5, 6, 7, 8, 9]}
metric: val_accuracy
mode: max
budget: {trials: 1, max_epochs: 1}
space:
"""


SOURCE_MODEL = "  model: {name: cnn, width: 8}\n  batch_norm: true\n"


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            "  init: {name: he, freeze: all_but_head}",
            "space.init = {'name': 'he', 'freeze': 'all_but_head'}: 'freeze' needs init 'pretrained'",
        ),
        (
            SOURCE_MODEL + "  init: {name: pretrained, source: SOURCE, freeze: 3}",
            "freeze = 3: model 'cnn' has 2 blocks; must be 0..2",
        ),
        (SOURCE_MODEL + "  init: {name: pretrained, source: SOURCE, freeze: head_only}", "space.init.freeze"),
        (
            "  model: {name: cnn, width: 16}\n  batch_norm: true\n  init: {name: pretrained, source: SOURCE}",
            "does not fit model 'cnn' (width=16, batch_norm=True) on (1, 8, 8) inputs: "
            "blocks.0.0.weight is [8, 1, 3, 3] in the source but [16, 1, 3, 3] in the model",
        ),
        (
            SOURCE_MODEL.replace("true", "false") + "  init: {name: pretrained, source: SOURCE}",
            "the model's blocks.0.0.bias [8] is not in the source",
        ),
        (
            "  model: resnet18\n  init: {name: pretrained, source: resnet18.IMAGENET1K_V7}",
            "unknown torchvision weights; resnet18 has: IMAGENET1K_V1",
        ),
        ("  init: {name: pretrained, source: resnet18.IMAGENET1K_V1}", "the source is torchvision's resnet18"),
    ],
)
def test_invalid_combinations_are_one_line_with_exit_2(space, expected, source, tmp_path, capsys):
    path = write_spec(tmp_path, SPEC + space.replace("SOURCE", source) + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err


def test_matching_source_validates(source, tmp_path):
    path = write_spec(
        tmp_path, SPEC + SOURCE_MODEL + f"  init: {{name: pretrained, source: {source}, freeze: {{grid: [0, 1, 2]}}}}\n"
    )
    assert main(["validate", str(path)]) == 0


def test_torchvision_weights_without_network_is_one_clear_line(monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        from urllib.error import URLError

        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    images = synthetic_data.write_image_folder(tmp_path / "images")  # 3 channels, as ImageNet weights need
    cfg = Config(
        model={"name": "resnet18", "stem": "imagenet"},
        batch_norm=True,
        data={"name": "image_folder", "root": str(images)},
        init={"name": "pretrained", "source": "resnet18.IMAGENET1K_V1"},
        epochs=1,
    )
    with pytest.raises(FilesUnavailable) as caught:
        train(cfg, ListReport())
    message = str(caught.value)
    assert "\n" not in message and "download.pytorch.org" in message and str(tmp_path) in message


# --- MLflow sources, resolved by the engine -------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, source, new_store) -> str:
    """An MLflow store holding a finished parent run of sweep 'pretrain', as the engine records it."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("pretrain", artifact_location=(tmp_path / "artifacts").as_uri())
    for status in ("FINISHED", "FAILED"):  # the later, failed run must be skipped
        run = client.create_run(experiment, tags={SWEEP_TAG: "parent"}, run_name=f"pretrain-{status}")
        client.log_artifact(run.info.run_id, source, "best_checkpoint")
        client.set_terminated(run.info.run_id, status)
    return uri


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Downloads land in the test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("TRICKSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def spec_with(tmp_path: Path, source_yaml: str) -> Path:
    return write_spec(
        tmp_path,
        SPEC
        + "  model: {name: cnn, width: 8}\n  batch_norm: true\n"
        + f"  init: {{name: pretrained, source: {source_yaml}, freeze: {{grid: [all_but_head, none]}}}}\n",
    )


def test_sweep_source_resolves_to_the_latest_finished_run(store, tmp_path):
    loaded = load_spec(spec_with(tmp_path, "{sweep: pretrain}"))
    lines = []
    resolved = resolve_sources(loaded, store, lines.append)
    path = resolved.raw_space["init"]["source"]
    finished = (
        MlflowClient(store)
        .search_runs(
            [MlflowClient(store).get_experiment_by_name("pretrain").experiment_id], "attributes.status = 'FINISHED'"
        )[0]
        .info.run_id
    )
    assert path == str(tmp_path / "cache" / "sources" / "runs" / finished / "best_checkpoint" / "state.pt")
    assert os.path.isfile(path) and finished in lines[0]
    assert resolved.space["init"]["source"].value == path
    assert loaded.raw_space["init"]["source"] == {"sweep": "pretrain"}  # the input is left alone
    # A trial gets the local file and trains from it.
    report = ListReport()
    train(
        Config(data=TARGET_DATA, model=MODEL, batch_norm=True, epochs=1, init={"name": "pretrained", "source": path}),
        report,
    )
    assert report.epochs == [1]


def test_mlflow_run_uri_source(store, tmp_path):
    client = MlflowClient(store)
    run_id = client.search_runs(
        [client.get_experiment_by_name("pretrain").experiment_id], "attributes.status = 'FINISHED'"
    )[0].info.run_id
    for uri in (f"runs:/{run_id}/best_checkpoint/state.pt", f"runs:/{run_id}/best_checkpoint"):
        resolved = resolve_sources(load_spec(spec_with(tmp_path, f"{{mlflow: '{uri}'}}")), store, lambda _: None)
        assert Path(resolved.raw_space["init"]["source"]).name == "state.pt"


def test_source_architecture_is_checked_once_resolved(store, tmp_path):
    path = write_spec(
        tmp_path, SPEC + "  model: {name: cnn, width: 16}\n  init: {name: pretrained, source: {sweep: pretrain}}\n"
    )
    loaded = load_spec(path)  # not resolvable at validation: accepted
    with pytest.raises(SpecError, match=r"does not fit model 'cnn' \(width=16"):
        resolve_sources(loaded, store, lambda _: None)


def test_unknown_sweep_source_is_one_line(store, tmp_path):
    with pytest.raises(
        SpecError, match=r"space.init.source = \{sweep: pretrian\}: no sweep 'pretrian' .*did you mean 'pretrain'"
    ):
        resolve_sources(load_spec(spec_with(tmp_path, "{sweep: pretrian}")), store, lambda _: None)


def test_unresolved_sweep_source_outside_the_engine_says_so():
    cfg = Config(data=TARGET_DATA, model=MODEL, epochs=1, init={"name": "pretrained", "source": {"sweep": "pretrain"}})
    with pytest.raises(ValueError, match="resolved to a local file by the engine"):
        train(cfg, ListReport())


@pytest.mark.scenario
def test_trials_on_a_node_without_the_drivers_file_start_from_its_weights(source, tmp_path):
    # The source file is deleted after the Tuner is built; trials run on a node with a cache
    # folder of its own and must still load the exact weights (frozen blocks equal the source's).
    own = tmp_path / "driver-disk" / CHECKPOINT_FILE
    own.parent.mkdir()
    own.write_bytes(Path(source).read_bytes())
    spec = write_spec(
        tmp_path,
        SPEC.replace("trials: 1", "trials: 2")
        + SOURCE_MODEL
        + f"  init: {{name: pretrained, source: '{own}', freeze: all_but_head}}\n",
    )
    worker_cache = tmp_path / "worker-cache"
    done = subprocess.run(
        [
            sys.executable,
            str(TESTS / "scenarios" / "remote_source.py"),
            str(spec),
            str(tmp_path / "runs"),
            str(worker_cache),
        ],
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == 0 and outcome["trials"] == 2, outcome
    assert outcome["frozen_blocks_equal_source"] == [True, True], outcome
    [copy] = outcome["shipped_copies"]  # one copy on the node, shared by its trials
    assert copy.endswith(f"/{CHECKPOINT_FILE}") and outcome["copy_equals_source"] == [True], outcome


def test_every_weights_file_a_space_names_is_shipped_once_and_localized_off_the_driver(
    ray_local, source, tmp_path, cache
):
    import ray

    from tricksweep import space as dsl
    from tricksweep.sources import shipped_files
    from tricksweep.trial import ShippedFile, localize

    other = tmp_path / "other.pt"
    other.write_bytes(b"not really weights")
    space = dsl.parse(
        {
            "init": {
                "choice": [
                    {"name": "pretrained", "source": source, "freeze": "none"},
                    {"name": "pretrained", "source": {"choice": [str(other), source]}},
                    {
                        "name": "pretrained",
                        "source": "resnet18.IMAGENET1K_V1",
                    },  # a torchvision name: downloaded, not shipped
                    {
                        "name": "pretrained",
                        "source": str(tmp_path / "missing.pt"),
                    },  # maybe on the workers: the trial says
                ]
            },
            "notes": {"const": {"source": str(other)}},  # a constant block is walked too
        }
    )
    files = shipped_files(space)
    assert sorted(files) == sorted([source, str(other)])
    assert ray.get(files[str(other)].data) == other.read_bytes()

    config = {"init": {"name": "pretrained", "source": str(other)}, "lr": 0.1, "label": str(other)}
    assert localize(config, files) == config  # on the driver's node the file is read where it is
    elsewhere = {path: ShippedFile(f.name, f.digest, f.data, node="another-node") for path, f in files.items()}
    moved = localize(config, elsewhere)
    copy = cache / "sources" / "shipped" / files[str(other)].digest / "other.pt"
    assert moved == {**config, "init": {"name": "pretrained", "source": str(copy)}}  # only `source` keys move
    assert copy.read_bytes() == other.read_bytes() and oct(copy.stat().st_mode & 0o777) == "0o644"
    assert localize(config, elsewhere) == moved and [p.name for p in copy.parent.iterdir()] == ["other.pt"]

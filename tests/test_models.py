"""Your own model by import string and torchvision's models by name: built with the data's class
count, trained for real (a few steps on digits, CPU), frozen as documented, checked at validation
by one zero batch; and the example project (examples/own_model, copied to a temporary folder and
run from there) swept with ASHA on real Ray (in smoke mode) and recorded in MLflow."""

from __future__ import annotations

import ast
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, unregistered
from mlflow.tracking import MlflowClient

from trainables.classifier import CHECKPOINT_FILE, Config, train
from trainables.models import MODELS
from trainables.report import ListReport
from tricksweep.cli import main
from tricksweep.tracking import PARENT_TAG, STATUS_TAG

EXAMPLE = ROOT / "examples" / "own_model"
FACTORY = "own_nets.nets:make_net"
# 3 classes x 4 images: a few optimizer steps per epoch, so each model trains in seconds.
SMALL_DATA = {"name": "digits", "classes": [0, 1, 2], "train_per_class": 4}
# Small on the CPU and able to take 8x8 inputs (squeezenet cannot: it is the rejected one below).
TORCHVISION_ARCHS = ["mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5"]
# A user's module beside the example's: a factory that names none of the switches, no blocks/head.
PLAIN_NETS = '''\
from torch import nn


def make_plain(in_shape, num_classes, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def make_thousand(in_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], 1000))
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example project copied out of the repository, as the current folder."""
    folder = tmp_path / "own_model"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "own_nets" / "plain.py").write_text(PLAIN_NETS)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def fit(model: dict, resume_from: str | None = None, **options) -> ListReport:
    report = ListReport(resume_from=resume_from)
    train(Config(model=model, data=SMALL_DATA, epochs=2, batch_size=8, **options), report)
    return report


def assert_trained(report: ListReport) -> None:
    assert report.epochs == [1, 2] and report.end is None
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in report.records)
    assert len(report.checkpoints) == 2


def saved_weights(model: dict, path: Path) -> Path:
    """A source for ``pretrained``: the weights of ``model`` built as the classifier builds it."""
    net = Config(model=model, data=SMALL_DATA).model.build((1, 8, 8), 3, False, 0.0)
    torch.save({"model": net.state_dict()}, path)
    return path


def checkpoint_state(report: ListReport) -> dict:
    return torch.load(Path(report.checkpoints[-1]) / CHECKPOINT_FILE, weights_only=True)["model"]


# -- the contract over torchvision's models and a factory -----------------------------------------


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_models_build_train_and_freeze(arch, tmp_path: Path, one_thread):
    model = {"name": "torchvision", "arch": arch}
    net = Config(model=model, data=SMALL_DATA).model.build((1, 8, 8), 3, False, 0.0)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)  # num_classes from the data, 1 channel adapted
    assert_trained(fit(model))

    # freeze: all_but_head keeps every block at the source's weights and trains the head.
    source = saved_weights(model, tmp_path / "source.pt")
    frozen = fit(model, init={"name": "pretrained", "source": str(source), "freeze": "all_but_head"})
    assert_trained(frozen)
    before, after = torch.load(source, weights_only=True)["model"], checkpoint_state(frozen)
    head = {k for k in after if k.startswith(f"{head_name(net)}.")}
    assert head and all(torch.equal(before[k], after[k]) for k in after if k not in head)
    assert any(not torch.equal(before[k], after[k]) for k in head)


def head_name(net) -> str:
    return next(name for name, module in net.named_children() if module is net.head)


@pytest.mark.parametrize(
    ("arch", "blocks", "head"),
    [("resnet18", ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"], "fc"),
     ("mobilenet_v3_small", [f"features.{i}" for i in range(13)], "classifier")],
)
def test_torchvision_blocks_and_head_are_found_as_documented(arch, blocks, head):
    net = Config(model={"name": "torchvision", "arch": arch}, data=SMALL_DATA).model.build((3, 32, 32), 3, False, 0.0)
    names = {module: name for name, module in net.named_modules()}
    assert [names[b] for b in net.blocks] == blocks and names[net.head] == head
    assert not any(k.startswith(("blocks.", "head.")) for k in net.state_dict())  # torchvision's own keys


def test_a_factory_gets_its_arguments_the_data_and_the_switches(project: Path, one_thread):
    net = Config(model={"name": FACTORY, "width": 8, "depth": 3}, data=SMALL_DATA).model.build((1, 8, 8), 3, True, 0.25)
    assert len(net.blocks) == 3 and net.blocks[0][0].in_channels == 1 and net.blocks[0][0].out_channels == 8
    assert isinstance(net.blocks[0][1], torch.nn.BatchNorm2d) and net.head[2].p == 0.25
    assert net.head[-1].out_features == 3

    report = fit({"name": FACTORY, "width": 8}, batch_norm=True, dropout=0.1, augment={"crop": {"p": 0.5}},
                 optimizer={"name": "sgd_momentum", "lr": 0.05}, lr_schedule="cosine")
    assert_trained(report)
    resumed = fit({"name": FACTORY, "width": 8}, resume_from=report.checkpoints[0], batch_norm=True, dropout=0.1,
                  augment={"crop": {"p": 0.5}}, optimizer={"name": "sgd_momentum", "lr": 0.05}, lr_schedule="cosine")
    assert resumed.epochs == [2]
    assert resumed.records[0]["val_loss"] == pytest.approx(report.records[1]["val_loss"], abs=1e-6)


def test_a_factory_with_blocks_freezes_its_first_blocks(project: Path, tmp_path: Path, one_thread):
    model = {"name": FACTORY, "width": 8, "depth": 2}
    source = saved_weights(model, tmp_path / "source.pt")
    report = fit(model, init={"name": "pretrained", "source": str(source), "freeze": 1})
    before, after = torch.load(source, weights_only=True)["model"], checkpoint_state(report)
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("blocks.0."))
    assert not torch.equal(before["blocks.1.0.weight"], after["blocks.1.0.weight"])


def test_a_factory_without_switches_trains_with_its_own_arguments(project: Path, one_thread):
    assert_trained(fit({"name": "own_nets.plain:make_plain", "hidden": 8}))


def test_the_option_table_says_what_each_named_model_takes():
    assert MODELS["torchvision"].model_fields["arch"].description
    for option in MODELS.values():
        assert all(field.description or name == "name" for name, field in option.model_fields.items())


# -- validation: one line, exit 2, before Ray starts ---------------------------------------------

SPEC = """\
name: bad
dataset: {name: digits}
metric: val_accuracy
mode: max
budget: {trials: 2, max_epochs: 2}
space:
"""

REJECTED = {
    "unknown factory argument": (
        f"  model: {{name: '{FACTORY}', widht: {{choice: [8, 16]}}}}\n",
        ["space.model", "factory 'own_nets.nets:make_net' takes no argument 'widht'", "did you mean 'width'",
         "it takes: width, depth"],
    ),
    "missing factory function": (
        "  model: {name: 'own_nets.nets:make_nte'}\n",
        ["module 'own_nets.nets' has no attribute 'make_nte'", "did you mean 'make_net'"],
    ),
    "batch_norm on a factory without it": (
        "  model: {name: 'own_nets.plain:make_plain'}\n  batch_norm: {choice: [false, true]}\n",
        ["space.batch_norm", "factory 'own_nets.plain:make_plain' does not take batch_norm",
         "its signature has no such parameter"],
    ),
    "dropout on a torchvision model without it": (
        "  model: {name: torchvision, arch: resnet18}\n  dropout: 0.2\n",
        ["space.dropout = 0.2", "torchvision's resnet18 does not take dropout"],
    ),
    "freeze on a factory without blocks": (
        "  model: {name: 'own_nets.plain:make_plain'}\n"
        "  init: {name: pretrained, source: weights.pt, freeze: all_but_head}\n",
        ["space.init", "freeze = 'all_but_head'", "exposes no `blocks`", "use freeze: none"],
    ),
    "too small for the architecture": (
        "  model: {name: torchvision, arch: squeezenet1_0}\n",
        ["space.model", "squeezenet1_0 cannot take the data's 1x8x8 inputs", "zero batch", "Output size is too small"],
    ),
    "output not the class count": (
        "  model: {name: 'own_nets.plain:make_thousand'}\n",
        ["maps a zero batch (2, 1, 8, 8) to (2, 1000)", "logits of shape (2, 10)"],
    ),
    "unknown torchvision arch": (
        "  model: {name: torchvision, arch: mobilenet_v3_smal}\n",
        ["space.model.arch = 'mobilenet_v3_smal'", "did you mean 'mobilenet_v3_small'"],
    ),
    "unknown model name": (
        "  model: {choice: [cnn, own_nets]}\n",
        ["space.model.name = 'own_nets'", "package.module:function"],
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_a_model_that_does_not_fit_is_rejected_in_one_line(case, project: Path, capsys):
    space, expected = REJECTED[case]
    path = project / "sweeps" / "bad.yaml"
    path.write_text(SPEC + space)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"


def test_a_class_count_known_only_once_the_data_is_read_is_not_checked(project: Path):
    from trainables.models import Factory, probe

    thousand = Factory(name="own_nets.plain:make_thousand")
    assert probe(thousand, (1, 8, 8), None).problem is None
    assert "(2, 1000)" in probe(thousand, (1, 8, 8), 10).problem
    assert probe(Factory(name=FACTORY, width=8), (3, 32, 32), 10).blocks == 2
    assert probe(thousand, (1, 8, 8), 10).blocks is None  # no blocks/head: not freezable


def test_validating_built_in_models_does_not_import_torch(tmp_path: Path):
    spec = tmp_path / "sweeps" / "cnn.yaml"
    spec.parent.mkdir()
    spec.write_text(SPEC + "  model: {name: cnn, width: {choice: [8, 16]}}\n  batch_norm: {choice: [false, true]}\n")
    code = (
        f"import sys; from tricksweep.spec import load_spec; load_spec({str(spec)!r}); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


# -- end to end: the example project on real Ray, recorded in MLflow -------------------------------


@pytest.mark.slow
def test_the_example_model_is_swept_with_asha_and_recorded(ray_local, project: Path, new_store):
    from tricksweep import run_sweep

    uri = new_store(project)  # a copy of a migrated store: MLflow's migrations cost about 1.5 CPU-s
    # Smoke mode, as `tricksweep run --smoke` (2 trials x 2 epochs, ASHA kept): what is asserted is that
    # the user's factory is swept and recorded; more trials or epochs would only train longer.
    outcome = run_sweep(unregistered("sweeps/own_model.yaml"), smoke_test=True, tracking_uri=uri, echo=lambda _: None)
    assert outcome.errors == 0
    assert outcome.best_value > 0.5  # digits: 2 epochs of a small CNN learn something (0.86 with seed 0)
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["tricksweep.scheduler"] == "asha"
    runs = client.search_runs([outcome.experiment_id])
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2  # smoke: 2 trials x 2 epochs
    assert {c.data.tags[STATUS_TAG] for c in children} <= {"completed", "stopped_by_asha"}
    for child in children:
        params = child.data.params
        assert params["model.name"] == FACTORY and params["model.width"] in ("16", "32")
        assert {"batch_norm", "dropout", "init", "optimizer.lr", "augment.crop.p"} <= params.keys()


def test_the_readme_shows_the_example_sweep_and_factory():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Your own model") : readme.index("### Your own data")]
    [block] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    spec = yaml.safe_load((EXAMPLE / "sweeps" / "own_model.yaml").read_text())
    assert yaml.safe_load(block) == {"space": spec["space"]}
    [factory] = [node for node in ast.parse((EXAMPLE / "own_nets" / "nets.py").read_text()).body
                 if isinstance(node, ast.FunctionDef) and node.name == "make_net"]
    names = [a.arg for a in factory.args.args]
    defaults = [None] * (len(names) - len(factory.args.defaults)) + [ast.literal_eval(d) for d in factory.args.defaults]
    signature = ", ".join(n if d is None else f"{n}={d!r}" for n, d in zip(names, defaults, strict=True))
    shown = re.search(r"`make_net\((.*?)\)`", section, flags=re.S)[1]
    assert " ".join(shown.split()) == signature

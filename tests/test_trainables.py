"""The classifier trainable, trained for real on the digits data (CPU, one thread, a few epochs)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from trainables import augment
from trainables.augment import AUGMENTATIONS, Augment
from trainables.classifier import CHECKPOINT_FILE, METRICS, Config, train
from trainables.init import INITS
from trainables.models import MODELS
from trainables.optim import OPTIMIZERS
from trainables.report import ListReport

REPO = Path(__file__).resolve().parents[1]
SMALL_CNN = {"name": "cnn", "width": 8}
# Keeps each model's contract test to a few seconds on one CPU thread (resnet18 has fixed widths:
# it gets 4 images per class of 3 classes instead).
MODEL_TEST_OPTIONS = {
    "resnet": {"model": {"name": "resnet", "width": 8, "depth": 2}},
    "resnet18": {"model": {"name": "resnet18"}, "data": {"name": "digits", "classes": [0, 1, 2], "train_per_class": 4}},
    "torchvision": {
        "model": {"name": "torchvision", "arch": "shufflenet_v2_x0_5"},
        "data": {"name": "digits", "classes": [0, 1, 2], "train_per_class": 4},
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(resume_from: str | None = None, **options) -> ListReport:
    options = {"model": SMALL_CNN, "epochs": 2, **options}
    report = ListReport(resume_from=resume_from)
    train(Config(**options), report)
    return report


def deterministic(report: ListReport) -> list[dict]:
    """The records without wall-clock time, the one metric that legitimately varies between runs."""
    return [{k: v for k, v in record.items() if k != "epoch_time_s"} for record in report.records]


def assert_contract(report: ListReport, epochs: int) -> None:
    assert report.epochs == list(range(1, epochs + 1))
    assert report.end is None
    for record in report.records:
        assert set(METRICS) <= record.keys()
        assert all(math.isfinite(record[name]) for name in METRICS), record
        assert 0 <= record["train_accuracy"] <= 1 and 0 <= record["val_accuracy"] <= 1
    assert len(report.checkpoints) == epochs
    assert all((Path(ckpt) / CHECKPOINT_FILE).is_file() for ckpt in report.checkpoints)


# --- contract over every registry entry -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains(name):
    report = fit(optimizer={"name": name})
    assert_contract(report, epochs=2)
    # Constant schedule: the reported lr is the option's default, so the option reached torch.
    assert {r["lr"] for r in report.records} == {OPTIMIZERS[name]().lr}


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory) -> str:
    """Weights of the test CNN, saved as the classifier's checkpoints are, for ``pretrained``."""
    from trainables.nets import SmallCNN

    path = tmp_path_factory.mktemp("source") / "state.pt"
    torch.save({"model": SmallCNN(1, 10, SMALL_CNN["width"], False, 0.0).state_dict(), "epoch": 1}, path)
    return str(path)


@pytest.mark.parametrize("name", sorted(INITS))
def test_every_init_trains(name, source_weights):
    extra = {"source": source_weights, "freeze": "all_but_head"} if name == "pretrained" else {}
    assert_contract(fit(init={"name": name, **extra}), epochs=2)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_trains(name):
    report = fit(augment={name: {"p": 1.0}})
    assert_contract(report, epochs=2)
    # The op is really applied during training: the trajectory differs from the un-augmented one.
    assert report.records[0]["train_loss"] != fit(epochs=1).records[0]["train_loss"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_from_defaults(name):
    assert_contract(fit(**{"model": {"name": name}, **MODEL_TEST_OPTIONS.get(name, {})}), epochs=2)


def test_zeros_init_stays_at_chance_where_he_learns():
    # With every weight equal, hidden units get identical gradients and never break symmetry.
    options = {"model": {"name": "mlp"}, "epochs": 3}
    zeros = fit(init={"name": "zeros"}, **options).records[-1]["val_accuracy"]
    he = fit(init={"name": "he"}, **options).records[-1]["val_accuracy"]
    assert zeros <= 0.3
    assert he > 0.8


# --- augmentation ops on a batch --------------------------------------------------------------


def batch(channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(16, channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def augmented(x: torch.Tensor, aug: Augment, seed: int = 1) -> torch.Tensor:
    return augment.apply(x, aug, torch.Generator().manual_seed(seed))


def only(name: str, p: float) -> Augment:
    return Augment(**{name: {"p": p}})


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_op_keeps_shape_dtype_and_range(name):
    x = batch()
    y = augmented(x, only(name, 1.0))
    assert (y.shape, y.dtype) == (x.shape, x.dtype)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_op_with_p0_is_identity(name):
    x = batch()
    assert torch.equal(augmented(x, only(name, 0.0)), x)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_op_with_p1_changes_the_batch(name):
    x = batch()
    assert not torch.equal(x, x.flip(-1))  # a mirror-symmetric batch would hide the flip
    assert not torch.equal(augmented(x, only(name, 1.0)), x)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_op_is_deterministic_per_generator_seed(name):
    x, aug = batch(), only(name, 0.5)
    assert torch.equal(augmented(x, aug, seed=1), augmented(x, aug, seed=1))
    assert not torch.equal(augmented(x, aug, seed=1), augmented(x, aug, seed=2))


def test_flip_mirrors_horizontally():
    x = batch()
    assert torch.equal(augmented(x, only("flip", 1.0)), x.flip(-1))


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (C, H, W) moved by whole pixels, the uncovered border filled with zeros."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_pad_crop_shifts_by_whole_pixels():
    pad = 2
    x = batch()
    y = augmented(x, Augment(crop={"p": 1.0, "mode": "pad", "padding": pad}))
    offsets = range(-pad, pad + 1)
    for before, after in zip(x, y):
        assert set(after.flatten().tolist()) <= set(before.flatten().tolist()) | {0.0}
        assert any(torch.equal(after, shifted(before, dy, dx)) for dy, dx in itertools.product(offsets, offsets))


def test_hue_rotation_applies_to_rgb_only():
    hue_only = Augment(color={"p": 1.0, "brightness": 0.0, "hue": 90.0})
    rgb = batch(channels=3)
    y = augmented(rgb, hue_only)
    assert y.shape == rgb.shape
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, rgb)
    grey = batch(channels=1)
    assert torch.equal(augmented(grey, hue_only), grey)


# --- resume, divergence, early stopping, isolation --------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"batch_norm": True, "augment": {"crop": {"p": 0.5}, "noise": {"p": 0.5}}},
            id="batchnorm-augment",
        ),
        pytest.param({"dropout": 0.3}, id="dropout"),  # dropout draws from torch's global RNG
        pytest.param(
            {"precision": "fp16", "batch_norm": True}, id="fp16-grad-scaler"
        ),  # the scaler's state resumes too
    ],
)
def test_resume_continues_exactly_where_the_run_stopped(options):
    uninterrupted = fit(epochs=4, **options)
    interrupted = fit(epochs=2, **options)
    resumed = fit(resume_from=interrupted.checkpoints[-1], epochs=4, **options)
    assert resumed.epochs == [3, 4]
    # Exact equality: one CPU thread makes the whole run bit-for-bit reproducible.
    assert deterministic(resumed) == deterministic(uninterrupted)[2:]


def test_divergence_ends_the_run_without_checkpointing_it():
    report = fit(model={"name": "mlp"}, optimizer={"name": "sgd", "lr": 1e4}, epochs=3)
    assert report.end == "diverged"
    assert len(report.epochs) < 3
    last = report.records[-1]
    assert math.isnan(last["train_loss"]) or math.isnan(last["val_loss"])
    # Every epoch before the diverged one checkpoints (checkpoint_every=1); the diverged one does not.
    assert len(report.checkpoints) == len(report.epochs) - 1
    assert not any(Path(ckpt).name == f"epoch_{report.epochs[-1]:04d}" for ckpt in report.checkpoints)


def test_early_stopping_stops_once_patience_runs_out():
    # No epoch can improve val_loss by 10, so the second epoch exhausts a patience of 1.
    report = fit(early_stopping={"patience": 1, "min_delta": 10.0, "monitor": "val_loss"}, epochs=5)
    assert report.epochs == [1, 2]
    assert report.end == "early_stopped"
    assert len(report.checkpoints) == 2  # the stopping epoch still saves, for the engine to keep


def test_early_stopping_off_runs_every_epoch():
    report = fit(early_stopping={"patience": None, "min_delta": 10.0}, epochs=5)
    assert report.epochs == [1, 2, 3, 4, 5]
    assert report.end is None


def test_same_config_gives_same_metrics_despite_a_trial_in_between():
    # Dropout and augmentation make both torch RNGs matter, not just the seeded generator.
    options = {"dropout": 0.2, "augment": {"noise": {"p": 0.5}}}
    first = fit(**options)
    fit(model={"name": "mlp"}, optimizer={"name": "sgd_momentum"}, augment={"crop": {"p": 1.0}}, seed=7)
    assert deterministic(fit(**options)) == deterministic(first)


# --- the GPU path's switches, checked on the CPU ----------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_learns_like_fp32(precision):
    options = {"epochs": 3, "batch_norm": True, "optimizer": {"name": "adam", "lr": 0.01}}
    full = fit(**options)
    reduced = fit(**options, precision=precision)
    assert_contract(reduced, 3)
    assert deterministic(reduced) != deterministic(full)  # autocast really ran
    assert reduced.records[-1]["val_accuracy"] > 0.8
    assert abs(reduced.records[-1]["val_accuracy"] - full.records[-1]["val_accuracy"]) < 0.05


@pytest.mark.parametrize("model", [SMALL_CNN, {"name": "resnet", "width": 8, "depth": 2}, {"name": "mlp"}])
def test_channels_last_changes_layout_not_results(model):
    nchw = fit(model=model, batch_norm=True, augment={"crop": {"p": 0.5}})
    nhwc = fit(model=model, batch_norm=True, augment={"crop": {"p": 0.5}}, channels_last=True)
    for a, b in zip(nchw.records, nhwc.records):
        # Same maths, other summation order in the convs: equal to float tolerance, not bit for bit.
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.02)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


def test_auto_precision_and_layout_are_plain_on_the_cpu():
    # auto = bf16 + channels_last on CUDA only; on the CPU it must be the exact fp32 NCHW run.
    assert deterministic(fit()) == deterministic(fit(precision="fp32", channels_last=False))


@pytest.mark.slow  # inductor's C++ kernels: ~35 CPU-s of gcc on a machine without its cache
def test_compiled_model_trains_and_resumes():
    compiled = fit(model={"name": "mlp", "width": 32, "depth": 1}, compile=True, epochs=2)
    assert_contract(compiled, 2)
    eager = fit(model={"name": "mlp", "width": 32, "depth": 1}, epochs=2)
    assert compiled.records[-1]["val_accuracy"] == pytest.approx(eager.records[-1]["val_accuracy"], abs=0.02)
    # The checkpoint holds the plain module's keys, so an eager run can resume a compiled one.
    resumed = fit(resume_from=compiled.checkpoints[0], model={"name": "mlp", "width": 32, "depth": 1}, epochs=2)
    assert resumed.epochs == [2]


# --- option tables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "loc", "kind"),
    [
        ({"optimizer": {"name": "adam", "momentum": 0.9}}, ("optimizer", "adam", "momentum"), "extra_forbidden"),
        ({"dropout": 1.0}, ("dropout",), "less_than"),
        ({"optimizer": {"name": "sgd", "lr": 0.0}}, ("optimizer", "sgd", "lr"), "greater_than"),
        ({"optimizer": {"name": "adam", "lr": -0.1}}, ("optimizer", "adam", "lr"), "greater_than"),
        ({"optimizer": {"name": "lion"}}, ("optimizer",), "union_tag_invalid"),
    ],
)
def test_config_rejects_invalid_options(options, loc, kind):
    with pytest.raises(ValidationError) as caught:
        Config.model_validate(options)
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == (loc, kind)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_config_accepts_bare_optimizer_name(name):
    assert Config.model_validate({"optimizer": name}).optimizer == OPTIMIZERS[name]()


def test_importing_the_trainable_does_not_import_torch():
    # A subprocess, because this test module has already imported torch.
    code = "import sys, trainables.classifier; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)

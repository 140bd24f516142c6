"""Datasets: every entry of DATASETS read from tiny files in its real on-disk format (no network),
split, subset and trained on; missing files give one line saying where and how to get them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic_data
import torch
from conftest import write_spec
from pydantic import ValidationError

from trainables import data
from trainables.classifier import Config, train
from trainables.data import DATASETS, FilesUnavailable
from trainables.report import ListReport
from tricksweep.cli import main
from tricksweep.spec import load_spec


def files_for(name: str, root: Path) -> dict:
    """Dataset options for ``name`` reading tiny files written under ``root``."""
    if name == "digits":
        return {"name": "digits"}
    if name == "mnist":
        synthetic_data.write_idx(root, "MNIST")
    elif name == "fashion_mnist":
        synthetic_data.write_idx(root, "FashionMNIST", gz=True)  # as copied from the mirror: gzipped only
    elif name == "cifar10":
        synthetic_data.write_cifar10(root)
    elif name == "image_folder":
        synthetic_data.write_image_folder(root)
        return {"name": name, "root": str(root), "size": 12}
    return {"name": name, "root": str(root), "download": False}


@pytest.fixture(autouse=True)
def fresh_cache():
    data.load.cache_clear()
    data._read.cache_clear()
    yield
    data.load.cache_clear()
    data._read.cache_clear()


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_and_trains(name, tmp_path):
    options = Config(data=files_for(name, tmp_path)).data
    split = data.load(options)
    assert split.x_train.dtype == torch.uint8 and split.y_train.dtype == torch.int64
    assert split.shape == tuple(options.input_shape)
    assert set(split.y_val.tolist()) == set(range(split.classes))  # stratified: every class validated
    report = ListReport()
    train(Config(data=options, model={"name": "cnn", "width": 4}, epochs=1), report)
    assert report.epochs == [1] and 0 <= report.records[0]["val_accuracy"] <= 1


def test_gzipped_idx_files_are_unpacked_once(tmp_path):
    synthetic_data.write_idx(tmp_path, "MNIST", gz=True)
    data.load(Config(data={"name": "mnist", "root": str(tmp_path), "download": False}).data)
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_cifar10_pixels_keep_channel_order(tmp_path):
    synthetic_data.write_cifar10(tmp_path)
    x, y, classes = Config(data={"name": "cifar10", "root": str(tmp_path), "download": False}).data.arrays()
    written, labels = synthetic_data.images(1, (3, 32, 32), seed=0)  # data_batch_1
    assert classes == 10 and x.shape[1:] == (3, 32, 32)
    assert np.array_equal(x[:10], written) and np.array_equal(y[:10], labels)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("mnist", "MNIST/raw"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_missing_files_without_download_is_one_clear_line(name, where, tmp_path):
    options = Config(data={"name": name, "root": str(tmp_path), "download": False}).data
    with pytest.raises(FilesUnavailable) as caught:
        data.load(options)
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / where) in message and "download: true" in message and "http" in message


def test_missing_image_folder_is_one_clear_line(tmp_path):
    with pytest.raises(FilesUnavailable, match="one folder per class") as caught:
        data.load(Config(data={"name": "image_folder", "root": str(tmp_path / "nope")}).data)
    assert "\n" not in str(caught.value)


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets

    # A mirror on a closed local port: torchvision's real download code fails as it does offline.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(FilesUnavailable, match="the download failed") as caught:
        data.load(Config(data={"name": "mnist", "root": str(tmp_path), "download": True}).data)
    assert "\n" not in str(caught.value) and str(tmp_path / "MNIST" / "raw") in str(caught.value)


def test_concurrent_loads_download_once(tmp_path, monkeypatch):
    import torchvision.datasets

    downloads = []

    def fake_download(self):  # stands in for the network: slow, then the files are there
        if not self._check_exists():
            downloads.append(1)
            time.sleep(0.3)
            synthetic_data.write_idx(Path(self.root), "MNIST")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    options = [
        Config(data={"name": "mnist", "root": str(tmp_path), "download": True, "split_seed": s}).data for s in range(3)
    ]
    errors = []

    def read(o):
        try:
            o.ensure_files()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=read, args=(o,)) for o in options]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(downloads) == 1


def test_class_subset_is_relabelled_in_the_given_order():
    full = data.load(Config(data={"name": "digits"}).data)
    subset = data.load(Config(data={"name": "digits", "classes": [7, 3]}).data)
    assert subset.classes == 2 and set(subset.y_train.tolist()) == {0, 1}
    # Label 0 means digit 7: its images are the full set's 7s.
    sevens = {tuple(x.flatten().tolist()) for x in full.x_train[full.y_train == 7]} | {
        tuple(x.flatten().tolist()) for x in full.x_val[full.y_val == 7]
    }
    assert all(tuple(x.flatten().tolist()) in sevens for x in subset.x_train[subset.y_train == 0])


def test_training_set_sizes_share_one_validation_set():
    sizes = [data.load(Config(data={"name": "digits", "train_per_class": n}).data) for n in (3, 20)]
    full = data.load(Config(data={"name": "digits"}).data)
    assert [len(s.y_train) for s in sizes] == [30, 200]
    assert all(torch.equal(s.x_val, full.x_val) for s in sizes)
    assert len(data.load(Config(data={"name": "digits", "train_fraction": 0.5}).data).y_train) < len(full.y_train)


@pytest.mark.parametrize(
    ("options", "loc"),
    [
        ({"name": "digits", "train_fraction": 0.5, "train_per_class": 10}, ("data", "digits", "train_per_class")),
        ({"name": "digits", "classes": [3, 10]}, ("data", "digits", "classes")),
        ({"name": "cifar10", "classes": [1, 1]}, ("data", "cifar10", "classes")),
        ({"name": "mnist", "download": "maybe"}, ("data", "mnist", "download")),
        ({"name": "digits", "root": "/data"}, ("data", "digits", "root")),
    ],
)
def test_dataset_options_are_checked(options, loc):
    with pytest.raises(ValidationError) as caught:
        Config(data=options)
    assert caught.value.errors()[0]["loc"] == loc


def test_relative_roots_become_absolute_before_ray_sees_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Config(data={"name": "mnist", "root": "data/mnist"}).data.root == str(tmp_path / "data" / "mnist")
    spec = write_spec(
        tmp_path,
        "name: s\ndataset: {name: cifar10, root: ./cifar}\nmetric: val_accuracy\nmode: max\n"
        "budget: {trials: 1, max_epochs: 1}\n",
    )
    assert load_spec(spec).spec.dataset == {"name": "cifar10", "root": str(tmp_path / "cifar")}


def test_dataset_fields_can_be_swept_and_are_validated(tmp_path, capsys):
    head = "name: s\ndataset: {name: digits}\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 1}\n"
    good = write_spec(tmp_path, head + "space:\n  data: {train_per_class: {grid: [5, null]}}\n", "good.yaml")
    assert load_spec(good).grid_points == 2
    bad = write_spec(tmp_path, head + "space:\n  data: {train_per_class: {grid: [5, 0]}}\n", "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    assert "space.data.train_per_class = 0" in capsys.readouterr().err


def test_digits_are_sklearns_digits_read_without_importing_sklearn():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    images, target, classes = data.Digits().arrays()
    bunch = load_digits()
    assert np.array_equal(images[:, 0], (bunch.images * 255.0 / 16.0).round().astype("uint8"))
    assert np.array_equal(target, bunch.target) and classes == 10
    # A fresh process (every new trial worker) reads them without the second-long sklearn import.
    code = "import sys; from trainables.data import Digits; Digits().arrays(); assert 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)

"""Datasets as in-memory uint8 tensors. ``digits`` ships inside scikit-learn, so it needs no network.

    Config(data={"name": "cifar10", "root": "/data/cifar10", "download": False, "train_per_class": 100})

Each process reads a dataset's files once (``_read`` is cached on the file options) and every
trial that process runs reuses the tensors (``load`` is cached on the whole options); trials
slice them, no DataLoader. File-backed datasets live under ``root`` (default: the cache dir of
the machine running the trial, ``~/.cache/tricksweep/<name>``) in the layout torchvision's own
classes read, so a folder torchvision downloaded works as is. Concurrent trials on one node
download under a file lock: the first downloads, the others wait and then read.

The validation images are held out of the training split (seeded, stratified, the same for
every training-set size); the datasets' official test splits are never read for training.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from trainables.options import Strict, one_of


class FilesUnavailable(RuntimeError):
    """Files a trial needs (a dataset, pretrained weights) are missing and cannot be fetched here.

    The message is one line: what is missing, where it was expected, and how to get it."""


def cache_dir() -> Path:
    """``$TRICKSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/tricksweep``, else ``~/.cache/tricksweep``."""
    if env := os.environ.get("TRICKSWEEP_CACHE_DIR"):
        return Path(env).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tricksweep").resolve()


def absolute(path: str) -> str:
    """``~`` expanded and relative paths resolved against the current folder: trials run with
    cwd = their trial dir, so every path must be absolute before Ray sees it."""
    return str(Path(path).expanduser().resolve())


class _Split(Strict):
    """How the images are split and subset; the same fields for every dataset."""

    CLASSES: ClassVar[int | None] = None  # class count of the full dataset (None: known once read)

    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class held out for validation")
    train_fraction: float = Field(1.0, gt=0, le=1, description="share of the remaining images trained on")
    train_per_class: int | None = Field(
        None, ge=1, description="images per class trained on (null = all); for small/medium/large-data studies"
    )
    classes: tuple[int, ...] | None = Field(
        None,
        min_length=2,
        description="class subset, relabelled 0..k-1 in this order, e.g. [5, 6, 7, 8, 9] (null = all)",
    )
    split_seed: int = Field(0, description="seed of the train/validation split (fixed across trials)")

    @field_validator("train_per_class")
    @classmethod
    def _one_size(cls, per_class: int | None, info: ValidationInfo) -> int | None:
        fraction = info.data.get("train_fraction", 1.0)
        if per_class is not None and fraction != 1.0:
            raise ValueError(f"train_fraction is {fraction} too: give one of the two training-set sizes")
        return per_class

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if classes is not None:
            if len(set(classes)) != len(classes):
                raise ValueError("a class is listed twice")
            bad = [c for c in classes if c < 0 or (cls.CLASSES is not None and c >= cls.CLASSES)]
            if bad:
                name = cls.model_fields["name"].default
                raise ValueError(
                    f"{bad[0]} is not a class of {name}; classes are 0..{(cls.CLASSES or 0) - 1}"
                    if cls.CLASSES
                    else f"{bad[0]} is negative; classes are numbered from 0"
                )
        return classes

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else self.CLASSES

    def arrays(self) -> tuple[Any, Any, int]:
        """(images uint8 (N, C, H, W), labels int64 (N,), class count) as numpy arrays."""
        raise NotImplementedError

    def files_key(self) -> Strict:
        """These options with the split fields at their defaults: what identifies the files read."""
        return type(self).model_validate(self.model_dump(exclude=set(_Split.model_fields)))


class Digits(_Split):
    """scikit-learn's 1,797 8x8 grey images of handwritten digits, 10 classes."""

    CLASSES: ClassVar[int] = 10
    name: Literal["digits"] = "digits"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    def arrays(self):
        import numpy as np

        if (csv := _digits_csv()) is not None:
            # The file load_digits reads, read without importing scikit-learn (and scipy): that
            # import costs about a second in every fresh trial process.
            table = np.loadtxt(csv, delimiter=",")
            pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
        else:
            from sklearn.datasets import load_digits

            bunch = load_digits()
            pixels, target = bunch.images, bunch.target
        # Pixel values are 0..16; store them as uint8 (smallest) and scale to [0, 1] on use.
        images = (pixels * 255.0 / 16.0).round().astype("uint8")[:, None, :, :]
        return images, target.astype("int64"), 10


def _digits_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder) / "datasets" / "data" / "digits.csv.gz").is_file():
            return path
    return None


class _Files(_Split):
    """A dataset torchvision can download: ``root`` and ``download``."""

    root: str | None = Field(None, description="data folder, made absolute (null = ~/.cache/tricksweep/<name>)")
    download: bool = Field(True, description="download missing files (needs the network on the trial's machine)")

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        return absolute(root) if root else root

    @property
    def data_root(self) -> Path:
        return Path(self.root) if self.root else cache_dir() / self.name

    # Subclasses: where torchvision keeps the files under root, which files, where they come from.
    def folder(self) -> Path:
        raise NotImplementedError

    def needed(self) -> list[str]:
        raise NotImplementedError

    def source_url(self) -> str:
        raise NotImplementedError

    def missing(self) -> list[str]:
        return [f for f in self.needed() if not (self.folder() / f).is_file()]

    def prepare(self) -> None:
        """Make files torchvision can read from what is there (called under the lock)."""

    def fetch(self) -> None:
        """Download into ``data_root`` with torchvision (called under the lock)."""
        raise NotImplementedError

    def ensure_files(self) -> None:
        """Files present, or fetched once per node, or FilesUnavailable with a one-line hint."""
        if not self.missing():
            return  # the common case takes no lock, so a read-only data folder works
        where = self.folder()
        try:
            self.data_root.mkdir(parents=True, exist_ok=True)
            from filelock import FileLock

            lock = FileLock(str(self.data_root / ".tricksweep.lock"))
            lock.acquire()
        except OSError as err:
            raise FilesUnavailable(
                f"{self.name}: files missing under {where} ({', '.join(self.missing())}) and the folder is not "
                f"writable ({err.strerror or err}); copy them there or set dataset.root to a writable folder"
            ) from None
        try:
            self.prepare()
            if not self.missing():
                return
            if not self.download:
                raise FilesUnavailable(
                    f"{self.name}: files missing under {where}: {', '.join(self.missing())} (download: false); "
                    f"set download: true on a machine with network access, or copy them there from {self.source_url()}"
                )
            try:
                self.fetch()
            except Exception as err:  # noqa: BLE001 - torchvision raises RuntimeError, URLError, OSError...
                reason = " ".join(str(err).split())[:300] or type(err).__name__
                raise FilesUnavailable(
                    f"{self.name}: files missing under {where} and the download failed ({reason}); "
                    f"fetch {self.source_url()} on a machine with network access and copy the files there"
                ) from None
            self.prepare()
            if self.missing():
                raise FilesUnavailable(
                    f"{self.name}: downloaded, but {', '.join(self.missing())} still missing under {where}"
                )
        finally:
            lock.release()


class _Idx(_Files):
    """MNIST-format idx files, raw or gzipped, under ``<root>/<Class>/raw`` as torchvision keeps them."""

    CLASSES: ClassVar[int] = 10
    TORCHVISION: ClassVar[str] = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    def _cls(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.TORCHVISION)

    def folder(self) -> Path:
        return self.data_root / self.TORCHVISION / "raw"

    def needed(self) -> list[str]:
        # torchvision checks all four, the test split too.
        return [f"{p}-{kind}-idx{d}-ubyte" for p in ("train", "t10k") for kind, d in (("images", 3), ("labels", 1))]

    def source_url(self) -> str:
        return self._cls().mirrors[0]

    def missing(self) -> list[str]:
        return [
            f for f in self.needed() if not (self.folder() / f).is_file() and not (self.folder() / f"{f}.gz").is_file()
        ]

    def prepare(self) -> None:
        # torchvision reads only the unpacked files; a user who copied the .gz files gets them unpacked.
        import gzip
        import shutil

        for name in self.needed():
            raw, packed = self.folder() / name, self.folder() / f"{name}.gz"
            if not raw.is_file() and packed.is_file():
                tmp = raw.with_suffix(".part")
                with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(raw)

    def fetch(self) -> None:
        self._cls()(str(self.data_root), train=True, download=True)

    def arrays(self):
        self.ensure_files()
        if any(not (self.folder() / f).is_file() for f in self.needed()):
            self._locked_prepare()
        ds = self._cls()(str(self.data_root), train=True, download=False)
        images = ds.data.numpy()[:, None, :, :]
        return images, ds.targets.numpy().astype("int64"), self.CLASSES

    def _locked_prepare(self) -> None:
        from filelock import FileLock

        with FileLock(str(self.data_root / ".tricksweep.lock")):
            self.prepare()


class MNIST(_Idx):
    """60,000 28x28 grey handwritten digits (10 classes), via torchvision."""

    TORCHVISION: ClassVar[str] = "MNIST"
    name: Literal["mnist"] = "mnist"


class FashionMNIST(_Idx):
    """60,000 28x28 grey images of clothing (10 classes), via torchvision."""

    TORCHVISION: ClassVar[str] = "FashionMNIST"
    name: Literal["fashion_mnist"] = "fashion_mnist"


class CIFAR10(_Files):
    """50,000 32x32 colour images in 10 classes, via torchvision (the python pickle batches)."""

    CLASSES: ClassVar[int] = 10
    name: Literal["cifar10"] = "cifar10"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def folder(self) -> Path:
        return self.data_root / "cifar-10-batches-py"

    def needed(self) -> list[str]:
        return [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]

    def source_url(self) -> str:
        from torchvision.datasets import CIFAR10 as TorchCIFAR10

        return TorchCIFAR10.url

    def fetch(self) -> None:
        _cifar10_class()(str(self.data_root), train=True, download=True)

    def arrays(self):
        self.ensure_files()
        ds = _cifar10_class()(str(self.data_root), train=True, download=False)
        import numpy as np

        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype="int64"), self.CLASSES


@functools.cache
def _cifar10_class():
    from torchvision.datasets import CIFAR10 as TorchCIFAR10
    from torchvision.datasets.utils import check_integrity

    class PresentCIFAR10(TorchCIFAR10):
        # torchvision pins each batch file to the official md5 on every read (and so rejects
        # anything else, a test's tiny files included); here presence is enough. Downloading
        # still verifies the archive's md5.
        def _check_integrity(self) -> bool:
            return all(
                check_integrity(os.path.join(self.root, self.base_folder, f))
                for f, _ in self.train_list + self.test_list
            )

        def _load_meta(self) -> None:
            meta = dict(self.meta, md5=None)
            self.meta = meta
            super()._load_meta()

    return PresentCIFAR10


class ImageFolder(_Split):
    """Your own images, one folder per class: ``<root>/<class name>/<image>.png`` (any format PIL
    reads). Classes are numbered in sorted folder-name order; images are resized to ``size``."""

    name: Literal["image_folder"] = "image_folder"
    root: str = Field(description="folder holding one sub-folder per class, made absolute")
    size: int = Field(32, ge=4, le=1024, description="images are resized to size x size pixels")
    channels: Literal[1, 3] = Field(3, description="1 = greyscale, 3 = RGB")

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str) -> str:
        return absolute(root)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def arrays(self):
        import numpy as np
        from PIL import Image
        from torchvision.datasets import ImageFolder as TorchImageFolder

        hint = f"expected {self.root}/<class name>/<image>.png, one folder per class"
        if not Path(self.root).is_dir():
            raise FilesUnavailable(f"image_folder: no folder {self.root}; {hint}")
        try:
            ds = TorchImageFolder(self.root, loader=lambda path: path)  # paths only: we decode below
        except FileNotFoundError as err:
            raise FilesUnavailable(f"image_folder: {' '.join(str(err).split())}; {hint}") from None
        if self.classes is not None and max(self.classes) >= len(ds.classes):
            raise FilesUnavailable(
                f"image_folder: classes = {list(self.classes)} but {self.root} holds {len(ds.classes)} class folders "
                f"({', '.join(ds.classes)}); class numbers are 0..{len(ds.classes) - 1} in that order"
            )
        mode = "L" if self.channels == 1 else "RGB"
        images = np.empty((len(ds.samples), self.channels, self.size, self.size), dtype="uint8")
        for i, (path, _) in enumerate(ds.samples):
            with Image.open(path) as img:
                pixels = np.asarray(img.convert(mode).resize((self.size, self.size), Image.BILINEAR))
            images[i] = pixels[None] if self.channels == 1 else pixels.transpose(2, 0, 1)
        return images, np.asarray(ds.targets, dtype="int64"), len(ds.classes)


DATASETS: dict[str, type[Strict]] = {
    "digits": Digits,
    "mnist": MNIST,
    "fashion_mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "image_folder": ImageFolder,
}
Dataset = one_of(DATASETS)


@dataclass(frozen=True)
class Split:
    x_train: Any  # uint8 tensor (N, C, H, W)
    y_train: Any  # int64 tensor (N,)
    x_val: Any
    y_val: Any
    classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


@functools.lru_cache(maxsize=2)
def _read(files: _Split) -> tuple[Any, Any, int]:
    # Keyed on the file options only, so trials that differ in split or size share one read.
    return files.arrays()


@functools.lru_cache(maxsize=4)
def load(options: _Split) -> Split:
    """Stratified, seeded train/validation split of ``options``' dataset as CPU uint8 tensors."""
    import numpy as np
    import torch

    images, labels, classes = _read(options.files_key())
    order = list(options.classes) if options.classes is not None else list(range(classes))
    rng = np.random.default_rng(options.split_seed)
    train_idx, val_idx, train_lab, val_lab = [], [], [], []
    for new, c in enumerate(order):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Validation first, so every training-set size is validated on the same images.
        n_val = max(1, round(len(idx) * options.val_fraction))
        val_idx.append(idx[:n_val])
        rest = idx[n_val:]
        if options.train_per_class is not None:
            rest = rest[: options.train_per_class]
        else:
            rest = rest[: max(1, round(len(rest) * options.train_fraction))]
        train_idx.append(rest)
        val_lab.append(np.full(n_val, new, dtype="int64"))
        train_lab.append(np.full(len(rest), new, dtype="int64"))
    tr, va = np.concatenate(train_idx), np.concatenate(val_idx)
    tensor = torch.from_numpy
    return Split(
        tensor(np.ascontiguousarray(images[tr])), tensor(np.concatenate(train_lab)),
        tensor(np.ascontiguousarray(images[va])), tensor(np.concatenate(val_lab)), len(order),
    )

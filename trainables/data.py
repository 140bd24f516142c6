"""Datasets: built-in ones, your own images in folders, and your own data by import string.

    Config(data={"name": "cifar10", "root": "/data/cifar10", "download": False, "train_per_class": 100})
    Config(data={"name": "own_data.data:load", "size": 16})   # your own factory, with its keyword arguments

**In memory, the default.** Each process reads a dataset's files once (``_read`` is cached on the
file options) and every trial that process runs reuses the tensors (``load`` is cached on the whole
options); trials slice them, no DataLoader. File-backed datasets live under ``root`` (default: the
cache dir of the machine running the trial, ``~/.cache/tricksweep/<name>``) in the layout
torchvision's own classes read, so a folder torchvision downloaded works as is. Concurrent trials on
one node download under a file lock: the first downloads, the others wait and then read.

The validation images are held out of the training split (seeded, stratified, the same for
every training-set size); the datasets' official test splits are never read for training.

**Your own data: a factory by import string.** ``dataset: {name: "pkg.mod:fn", <kwargs>}``: a name
with a ``:`` is a factory; every other key but ``stream`` and ``loader_workers`` is passed to it as a
keyword argument, checked against its signature when the spec is validated (sweep them under
``space: data:``). It is called once per trial process (cached on its arguments) and returns
``(train, validation)`` or ``(train, validation, classes)``, where

- ``train`` and ``validation`` are each ``(images, labels)``: images a uint8 tensor (N, C, H, W)
  of 0..255 pixels or a float tensor (N, C, H, W) of [0, 1] pixels (numpy arrays are accepted),
  labels int64 (N,) numbered from 0; or each a torch ``Dataset`` whose items are
  ``(image tensor (C, H, W), int label)`` in the same pixel conventions;
- ``classes`` (optional) is the class count, or a list of class names. Without it the count is
  ``len(train.classes)`` for a ``Dataset`` with a ``classes`` list (torchvision's convention), else
  1 + the largest label (of the tensors, or of ``train.targets`` for a streamed ``Dataset``).
  The input shape is always that of the first training image.

The split options of the built-in datasets (``val_fraction``, ``split_seed``, ``train_fraction``,
``train_per_class``, ``classes``) do not apply: the factory returns its own split. A factory that
wants one takes it as a keyword argument of its own (e.g. ``val_fraction``), and only then may the
spec set it. Class count and input shape are unknown until a trial loads the data, so checks that
need them at validation (pretrained weights against the model) are skipped for factories.

**Data that does not fit in memory: streaming.** ``image_folder`` and a factory's ``Dataset``s
accept ``stream`` (true / false / null = auto) and ``loader_workers`` (default 2). Streamed data is
read batch by batch through a torch ``DataLoader`` with ``loader_workers`` worker processes
(decoding and resizing happen there), in the order the in-memory path would use; the trainable
moves each batch to its device, where augmentation runs on the whole batch as in memory. Auto
streams when the decoded training + validation images would take more than ``memory_budget()``:
an eighth of the machine's physical memory, since every trial process holds its own copy and a
node runs several. The size is estimated, not measured: image count x C x H x W x bytes per
pixel (``image_folder``: files found x channels x size x size, uint8; a ``Dataset``: its length x
the first item's bytes, so 4 per pixel for float32 images). Factory tensors are in memory already and never stream.

Normalization of streamed data uses per-channel statistics of a bounded sample of the training set
(``STATS_SAMPLE`` images, a seeded random subset; all of them when there are fewer). With all
images in the sample, streamed and in-memory training give the same results: the same batches
in the same order, the same augmentation draws, the same arithmetic.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, ValidationInfo, field_validator, model_serializer

from trainables.options import Strict

STATS_SAMPLE = 4096  # training images the normalization statistics of streamed data are computed on


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


class _Streamable(Strict):
    """Options of the datasets that can stream from disk (see the module docstring)."""

    stream: bool | None = Field(
        None, description="read batches from disk through a DataLoader (null = when too large for memory_budget())"
    )
    loader_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes when streaming (0 = none)")


class ImageFolder(_Split, _Streamable):
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

    def files_key(self) -> Strict:
        return type(self).model_validate(self.model_dump(exclude={*_Split.model_fields, *_Streamable.model_fields}))

    def scan(self) -> tuple[list[str], Any, int]:
        """(image paths, labels int64 (N,), class count), without decoding an image."""
        import numpy as np
        from torchvision.datasets import ImageFolder as TorchImageFolder

        hint = f"expected {self.root}/<class name>/<image>.png, one folder per class"
        if not Path(self.root).is_dir():
            raise FilesUnavailable(f"image_folder: no folder {self.root}; {hint}")
        try:
            ds = TorchImageFolder(self.root, loader=lambda path: path)  # paths only: decoded on use
        except FileNotFoundError as err:
            raise FilesUnavailable(f"image_folder: {' '.join(str(err).split())}; {hint}") from None
        if self.classes is not None and max(self.classes) >= len(ds.classes):
            raise FilesUnavailable(
                f"image_folder: classes = {list(self.classes)} but {self.root} holds {len(ds.classes)} class folders "
                f"({', '.join(ds.classes)}); class numbers are 0..{len(ds.classes) - 1} in that order"
            )
        return [path for path, _ in ds.samples], np.asarray(ds.targets, dtype="int64"), len(ds.classes)

    def arrays(self):
        import numpy as np

        paths, labels, classes = self.scan()
        images = np.empty((len(paths), self.channels, self.size, self.size), dtype="uint8")
        for i, path in enumerate(paths):
            images[i] = decode(path, self.size, self.channels)
        return images, labels, classes


def decode(path: str, size: int, channels: int) -> Any:
    """One image file as uint8 (channels, size, size): the same pixels in memory and streamed."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR))
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


class ImageFiles:
    """A torch map-style dataset over image files: item i is (uint8 tensor (C, H, W), label).
    Picklable, so DataLoader workers decode in parallel."""

    def __init__(self, paths: list[str], labels: Any, size: int, channels: int):
        self.paths, self.labels, self.size, self.channels = paths, labels, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        return torch.from_numpy(decode(self.paths[i], self.size, self.channels).copy()), int(self.labels[i])


def is_import_string(name: Any) -> bool:
    """A dataset name naming a factory: ``'pkg.mod:fn'``."""
    return isinstance(name, str) and ":" in name


FACTORY_TAG = "package.module:function"
# Keys of a factory's options that are the engine's, never passed to the factory.
FACTORY_ENGINE_KEYS = frozenset(_Streamable.model_fields)


class Factory(_Streamable):
    """Your own data by import string (contract: the module docstring). Written in a spec as
    ``{name: "pkg.mod:fn", <kwargs>, stream, loader_workers}``."""

    # The union's tag; the spec's name is the import string itself (see _dataset_options), and this
    # one reads right in the list of valid names an unknown one gets.
    name: Literal["package.module:function"] = "package.module:function"
    target: str = Field(description="import string 'package.module:function' of the factory")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")

    input_shape: ClassVar[None] = None  # unknown until the data is loaded
    num_classes: ClassVar[None] = None

    def __hash__(self) -> int:  # kwargs is a dict: hash its JSON (load() is cached on the options)
        return hash((self.target, json.dumps(self.kwargs, sort_keys=True, default=str), self.stream,
                     self.loader_workers))

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Callable[[Any], dict]) -> dict[str, Any]:
        # Dumped as written, so spec.dataset and space.data merge with the kwargs at the top level.
        engine = {k: v for k, v in handler(self).items() if k in FACTORY_ENGINE_KEYS and k in self.model_fields_set}
        return {"name": self.target, **self.kwargs, **engine}

    def function(self) -> Callable[..., Any]:
        return _factory_function(self.target)

    def call(self) -> tuple[Any, Any, Any]:
        """Call the factory: (train, validation, classes or None), as documented."""
        returned = self.function()(**self.kwargs)
        if isinstance(returned, tuple) and len(returned) in (2, 3):
            return (*returned, None) if len(returned) == 2 else returned
        raise DataContractError(f"{self.target} returned a {type(returned).__name__}; "
                                "must return (train, validation) or (train, validation, classes)")


class DataContractError(ValueError):
    """A factory's return value does not meet the contract; one line saying what is wrong."""


@functools.cache
def _factory_function(target: str) -> Callable[..., Any]:
    """The factory ``target`` names, imported; ValueError (one line) when it cannot be."""
    from trainables.contract import ContractError, _close, _import, split_target

    module_name, function = split_target(target)
    try:
        module = _import(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"no module named {err.name!r} on the import path (the cwd, the spec's folder "
                         "and its parent, the installed packages)") from None
    except ContractError as err:
        raise ValueError(str(err)) from None
    if not hasattr(module, function or ""):
        raise ValueError(f"module '{module_name}' has no attribute '{function}'{_close(function or '', module)}")
    factory = getattr(module, function)
    if not callable(factory):
        raise ValueError(f"'{target}' is a {type(factory).__name__}, not a function")
    return factory


def _check_factory(target: str, kwargs: dict[str, Any]) -> None:
    """The kwargs against the factory's signature: ValueError (one line) with did-you-mean."""
    factory = _factory_function(target)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # no signature to check against: the call decides
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = f"it takes: {', '.join(named)}" if named else "it takes no keyword arguments"
    for key in kwargs:
        if key not in named and not takes_any:
            if key in _Split.model_fields:
                raise ValueError(f"{target} does not take '{key}': a factory returns its own train/validation "
                                 f"split, so the engine's split options do not apply (take '{key}' as a keyword "
                                 f"argument to split there); {takes}")
            close = difflib.get_close_matches(key, named, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{target} does not take '{key}'{hint}; {takes}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"{target}{signature} cannot be called with {sorted(kwargs)}: {err}") from None


DATASETS: dict[str, type[Strict]] = {
    "digits": Digits,
    "mnist": MNIST,
    "fashion_mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "image_folder": ImageFolder,
}


def _dataset_options(value: Any) -> Any:
    """`data: digits` means `{name: digits}`; a name with a ':' is a factory, checked here against
    its signature (so the error shows the spec's own keys, in one line). Other names are the union's."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        return value
    name = value["name"]
    if is_import_string(name):
        kwargs = {k: v for k, v in value.items() if k != "name" and k not in FACTORY_ENGINE_KEYS}
        _check_factory(name, kwargs)
        engine = {k: v for k, v in value.items() if k in FACTORY_ENGINE_KEYS}
        return {"name": FACTORY_TAG, "target": name, "kwargs": kwargs, **engine}
    return value


Dataset = Annotated[
    Union[tuple(DATASETS.values()) + (Factory,)],  # noqa: UP007 - built at run time from the table
    Discriminator("name"),
    BeforeValidator(_dataset_options),
]


@dataclass(frozen=True)
class Split:
    """A dataset in memory: CPU tensors (images uint8, or float for a factory's float tensors)."""

    x_train: Any  # uint8 tensor (N, C, H, W)
    y_train: Any  # int64 tensor (N,)
    x_val: Any
    y_val: Any
    classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Streamed:
    """A dataset read from disk batch by batch: torch map-style datasets of (image, label)."""

    train: Any
    val: Any
    classes: int
    shape: tuple[int, int, int]
    workers: int

    def loader(self, dataset: Any, batches: Any, pin: bool) -> Any:
        """A DataLoader yielding the batches ``batches`` (an iterable of index lists) names."""
        import torch
        from torch.utils.data import DataLoader

        # Its own generator: a DataLoader draws its workers' seeds from torch's global one otherwise,
        # and that one seeds the model's init and dropout.
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=pin,
                          persistent_workers=self.workers > 0, generator=torch.Generator().manual_seed(0))


class EpochBatches:
    """A batch sampler whose order is set before each epoch: the DataLoader's workers persist."""

    def __init__(self, n: int, batch_size: int):
        self.order: list[int] = list(range(n))
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.order), self.batch_size):
            yield self.order[i : i + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


def memory_budget() -> int:
    """Bytes of decoded images a dataset may take in memory before auto streams it: an eighth of
    the machine's physical memory (each trial process holds its own copy; a node runs several)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8


def streams(option: bool | None, estimated_bytes: int) -> bool:
    return option if option is not None else estimated_bytes > memory_budget()


@functools.lru_cache(maxsize=2)
def _read(files: _Split) -> tuple[Any, Any, int]:
    # Keyed on the file options only, so trials that differ in split or size share one read.
    return files.arrays()


@functools.lru_cache(maxsize=2)
def _scan(files: ImageFolder) -> tuple[list[str], Any, int]:
    return files.scan()


@functools.lru_cache(maxsize=4)
def load(options: Any) -> Split | Streamed:
    """``options``' dataset: a stratified, seeded train/validation split as CPU tensors, or as
    streamed datasets (image_folder / a factory's Datasets, when asked or too large)."""
    if isinstance(options, Factory):
        return _load_factory(options)
    if isinstance(options, ImageFolder):
        paths, labels, classes = _scan(options.files_key())
        if streams(options.stream, len(paths) * options.channels * options.size**2):
            tr, va, train_lab, val_lab, count = _split_indices(labels, classes, options)
            pick = [paths[i] for i in tr], [paths[i] for i in va]
            return Streamed(ImageFiles(pick[0], train_lab, options.size, options.channels),
                            ImageFiles(pick[1], val_lab, options.size, options.channels),
                            count, options.input_shape, options.loader_workers)
    import numpy as np
    import torch

    images, labels, classes = _read(options.files_key())
    tr, va, train_lab, val_lab, count = _split_indices(labels, classes, options)
    tensor = torch.from_numpy
    return Split(
        tensor(np.ascontiguousarray(images[tr])), tensor(train_lab),
        tensor(np.ascontiguousarray(images[va])), tensor(val_lab), count,
    )


def _split_indices(labels: Any, classes: int, options: _Split) -> tuple[Any, Any, Any, Any, int]:
    """(train indices, validation indices, their new labels, class count) of a stratified split."""
    import numpy as np

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
    return (np.concatenate(train_idx), np.concatenate(val_idx), np.concatenate(train_lab),
            np.concatenate(val_lab), len(order))


def _load_factory(options: Factory) -> Split | Streamed:
    import torch

    train, val, declared = options.call()
    where = options.target
    if _is_dataset(train) != _is_dataset(val):
        raise DataContractError(f"{where}: train and validation must both be (images, labels) or both Datasets")
    if not _is_dataset(train):
        x_train, y_train = _tensors(train, f"{where}: train")
        x_val, y_val = _tensors(val, f"{where}: validation")
        if x_train.shape[1:] != x_val.shape[1:]:
            raise DataContractError(f"{where}: train images are {tuple(x_train.shape[1:])}, validation images "
                                    f"{tuple(x_val.shape[1:])}; must be the same (C, H, W)")
        labels_max = int(max(y_train.max(), y_val.max()))
        return Split(x_train, y_train, x_val, y_val, _class_count(declared, train, labels_max, where))
    for ds, part in ((train, "train"), (val, "validation")):
        if len(ds) == 0:
            raise DataContractError(f"{where}: the {part} Dataset is empty")
    first = _item(train[0], f"{where}: train[0]")
    shape = tuple(first.shape)
    if streams(options.stream, (len(train) + len(val)) * first.numel() * first.element_size()):
        targets = getattr(train, "targets", None)
        labels_max = int(torch.as_tensor(targets).max()) if targets is not None and declared is None else None
        if declared is None and not isinstance(getattr(train, "classes", None), list | tuple) and labels_max is None:
            raise DataContractError(f"{where}: a streamed Dataset needs its class count: return (train, validation, "
                                    "classes), or give the Dataset a `classes` list or a `targets` sequence")
        return Streamed(train, val, _class_count(declared, train, labels_max or 0, where), shape,
                        options.loader_workers)
    x_train, y_train = _materialize(train, options.loader_workers, f"{where}: train")
    x_val, y_val = _materialize(val, options.loader_workers, f"{where}: validation")
    labels_max = int(max(y_train.max(), y_val.max()))
    return Split(x_train, y_train, x_val, y_val, _class_count(declared, train, labels_max, where))


def _is_dataset(value: Any) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, tuple | list)


def _tensors(pair: Any, where: str) -> tuple[Any, Any]:
    import torch

    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise DataContractError(f"{where} is a {type(pair).__name__}; must be (images, labels) or a torch Dataset")
    images, labels = torch.as_tensor(pair[0]), torch.as_tensor(pair[1])
    _check_images(images, where, dims=4)
    if labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != len(images):
        raise DataContractError(f"{where} labels are {labels.dtype} {tuple(labels.shape)}; must be integers "
                                f"({len(images)},)")
    if len(labels) == 0 or int(labels.min()) < 0:
        raise DataContractError(f"{where}: labels must be numbered from 0, and there must be some")
    return images.contiguous(), labels.to(torch.int64)


def _check_images(images: Any, where: str, dims: int) -> None:
    import torch

    if images.dim() != dims or not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        shape = "(N, C, H, W)" if dims == 4 else "(C, H, W)"
        raise DataContractError(f"{where} images are {images.dtype} {tuple(images.shape)}; must be uint8 or float "
                                f"{shape}")


def _item(item: Any, where: str) -> Any:
    import torch

    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataContractError(f"{where} is a {type(item).__name__}; must be (image tensor (C, H, W), label)")
    image = torch.as_tensor(item[0])
    _check_images(image, where, dims=3)
    return image


def _materialize(dataset: Any, workers: int, where: str) -> tuple[Any, Any]:
    """A Dataset read once into tensors, through a DataLoader with ``workers`` processes."""
    import torch
    from torch.utils.data import DataLoader

    _item(dataset[0], f"{where}[0]")
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=256, num_workers=workers, generator=torch.Generator().manual_seed(0)):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs).contiguous(), torch.cat(ys).to(torch.int64)


def _class_count(declared: Any, train: Any, labels_max: int, where: str) -> int:
    if declared is not None:
        count = len(declared) if isinstance(declared, list | tuple) else declared
        if not isinstance(count, int) or count < 2:
            raise DataContractError(f"{where}: classes = {declared!r}; must be a count >= 2 or a list of names")
        if labels_max >= count:
            raise DataContractError(f"{where}: label {labels_max} but classes = {count}; labels are 0..{count - 1}")
        return count
    names = getattr(train, "classes", None)
    if isinstance(names, list | tuple) and len(names) > labels_max:
        return len(names)
    return max(2, labels_max + 1)

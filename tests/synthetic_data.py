"""Tiny datasets written in each dataset's real on-disk format, so tests load them through the
same torchvision code path as the real files. Class c's images are brighter with c, plus noise:
learnable in an epoch or two."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CLASSES = 10


def images(n_per_class: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n_per_class * 10, *shape) uint8 images and their int64 labels, class-interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(CLASSES), n_per_class)
    base = (labels * 25 + 10).reshape(-1, *([1] * len(shape)))
    pixels = np.clip(base + rng.normal(0, 12, size=(len(labels), *shape)), 0, 255).astype("uint8")
    return pixels, labels.astype("int64")


def _idx(array: np.ndarray) -> bytes:
    # IDX: 2 zero bytes, type 0x08 (uint8), number of dims, then big-endian int32 sizes and the data.
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(root: Path, folder: str = "MNIST", n_per_class: int = 6, gz: bool = False) -> Path:
    """MNIST / FashionMNIST: ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_per_class), ("t10k", 1)):
        x, y = images(n, (28, 28), seed=len(prefix))
        for name, array in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y.astype("uint8"))):
            data = _idx(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return root


def write_cifar10(root: Path, n_per_class_per_batch: int = 1) -> Path:
    """CIFAR-10's python pickles: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        x, y = images(n_per_class_per_batch, (3, 32, 32), seed=i)
        batch = {
            "batch_label": f"{name} (synthetic)",
            "labels": y.tolist(),
            "data": x.reshape(len(x), -1),  # rows of 3072 bytes: the red plane, green, blue
            "filenames": [f"{name}_{j}.png" for j in range(len(x))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta = {
        "label_names": [f"class_{c}" for c in range(CLASSES)],
        "num_cases_per_batch": CLASSES * n_per_class_per_batch,
        "num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return root


def write_image_folder(root: Path, classes: int = 3, n_per_class: int = 4, size: int = 12) -> Path:
    """``<root>/<class name>/<i>.png``, RGB PNGs of ``size`` x ``size`` pixels."""
    from PIL import Image

    x, y = images(n_per_class, (size, size, 3))
    for i, (pixels, label) in enumerate(zip(x, y)):
        if label >= classes:
            continue
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    return root

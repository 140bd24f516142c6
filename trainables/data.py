"""Datasets as in-memory tensors. ``digits`` ships inside scikit-learn, so it needs no network.

Each process loads a dataset once (``load`` is cached on the dataset options) and every trial
that process runs reuses the tensors; trials slice them, no DataLoader.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from trainables.options import Strict, one_of


class Digits(Strict):
    """scikit-learn's 1,797 8x8 grey images of handwritten digits, 10 classes."""

    name: Literal["digits"] = "digits"
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of images held out for validation")
    train_fraction: float = Field(1.0, gt=0, le=1, description="share of the remaining images trained on")
    split_seed: int = Field(0, description="seed of the train/validation split (fixed across trials)")

    def arrays(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixel values are 0..16; store them as uint8 (smallest) and scale to [0, 1] on use.
        images = (bunch.images * 255.0 / 16.0).round().astype("uint8")[:, None, :, :]
        return images, bunch.target.astype("int64"), 10


DATASETS: dict[str, type[Strict]] = {"digits": Digits}
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


@functools.lru_cache(maxsize=4)
def load(options: Strict) -> Split:
    """Stratified, seeded train/validation split of ``options``' dataset as CPU tensors."""
    import numpy as np
    import torch

    images, labels, classes = options.arrays()
    rng = np.random.default_rng(options.split_seed)
    train_idx, val_idx = [], []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * options.val_fraction))
        val_idx.append(idx[:n_val])
        rest = idx[n_val:]
        train_idx.append(rest[: max(1, round(len(rest) * options.train_fraction))])
    tr, va = np.concatenate(train_idx), np.concatenate(val_idx)
    tensor = torch.from_numpy
    return Split(tensor(images[tr]), tensor(labels[tr]), tensor(images[va]), tensor(labels[va]), classes)

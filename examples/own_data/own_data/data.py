"""Two dataset factories for tricksweep's built-in classifier (the contract: the module docstring
of trainables/data.py). A sweep names one as ``dataset: {name: "own_data.data:digits", ...}``;
every other key of ``dataset`` is a keyword argument, checked against the signature before any
trial runs, and sweepable under ``space: data:``.

Replace the bodies with your own loading code: read your files, split them, return tensors or
torch Datasets. Paths are best made absolute here: trials run with the trial folder as cwd.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def digits(val_fraction: float = 0.2, seed: int = 0):
    """Tensors: scikit-learn's 8x8 digits as uint8 (N, 1, 8, 8) images and int64 labels, split here
    (the engine's split options do not apply to a factory: it takes its own)."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    images = torch.tensor(pixels * 255 / 16).round().to(torch.uint8).view(-1, 1, 8, 8)
    labels = torch.tensor(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(labels) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (images[train], labels[train]), (images[val], labels[val]), 10  # 10: the class count, declared


class Upscaled(Dataset):
    """Digits as float [0, 1] images of size x size, made one at a time, as a reader of image files
    would: the engine streams it through a DataLoader when asked (or when too large for memory)."""

    classes = [str(d) for d in range(10)]  # torchvision's convention: the class count is read from it

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i][None].float() / 255
        image = torch.nn.functional.interpolate(image, size=(self.size, self.size), mode="bilinear")
        return image[0], int(self.labels[i])


def upscaled(size: int = 16, val_fraction: float = 0.2):
    """Datasets: the digits of ``digits`` at size x size."""
    (x_train, y_train), (x_val, y_val), _ = digits(val_fraction)
    return Upscaled(x_train, y_train, size), Upscaled(x_val, y_val, size)

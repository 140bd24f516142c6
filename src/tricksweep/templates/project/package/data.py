"""Your data: replace ``load``'s body with code that reads your files. The sweep names it by import
string, ``dataset: {name: "$package.data:load", val_fraction: 0.2}``; every key beside ``name`` is
a keyword argument, checked against this signature, and sweepable under ``space: data:``.

Return ``(x_train, y_train), (x_val, y_val), num_classes``: uint8 images (N, C, H, W) and int64
labels as tensors (held in memory, the fast path), or two torch ``Dataset``s yielding
``(image tensor, label)`` (streamed through a DataLoader when asked or when too large to hold).
The whole contract: the module docstring of ``trainables/data.py``. Make paths absolute here:
trials run with their trial folder as the current folder.
"""

from __future__ import annotations

import torch


def load(val_fraction: float = 0.2, seed: int = 0):
    """REPLACE ME: scikit-learn's 8x8 digits (no download), split into training and validation."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    images = torch.tensor(pixels * 255 / 16).round().to(torch.uint8).view(-1, 1, 8, 8)
    labels = torch.tensor(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(labels) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (images[train], labels[train]), (images[val], labels[val]), 10

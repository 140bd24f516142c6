"""A user's function trainable without torch (tests/test_own_trainable.py): it reports what
examples/own_trainable's ``own_mlp.fit:fit`` reports (val_accuracy, val_loss), so a sweep whose
subject is the engine's check of those reports starts a worker that imports no torch (about 2
CPU-s instead of 7)."""

from __future__ import annotations


def fit(config: dict, report) -> None:
    for epoch in range(1, report.info.epochs + 1):
        accuracy = 1 - 1 / (1 + epoch * config.get("hidden", 8))
        report(epoch=epoch, metrics={"val_accuracy": accuracy, "val_loss": 1.0 - accuracy})

"""A test-only trainable that never imports torch, for sweeps whose subject is orchestration (the
searchers, extend's lineage), not training: any space is accepted, and each epoch reports a
val_accuracy (and val_loss) that is a fixed function of the configuration (so configurations rank apart)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

METRICS = ("val_accuracy", "val_loss")


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")


def score(config: dict) -> float:
    """A value in [0.1, 0.9) the same for the same configuration, different for different ones."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).digest()
    return 0.1 + 0.8 * int.from_bytes(digest[:4], "big") / 2**32


def train(cfg: Config, report) -> None:
    value = score(cfg.model_dump())
    for epoch in range(1, report.info.epochs + 1):
        accuracy = value * epoch / report.info.epochs
        report(epoch=epoch, metrics={"val_accuracy": accuracy, "val_loss": 1.0 - accuracy})

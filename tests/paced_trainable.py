"""A test-only trainable without torch whose epochs take wall time, not CPU, for scenarios whose
subject is what happens around training (a node dies, the tracking server goes away): there,
training only has to keep trials running while the event lands, and the CNN that did it spent
most of those tests' CPU (a 1-slot sweep of 160 CNN epochs: ~70 CPU-s on a 2-CPU machine).

Each epoch sleeps ``epoch_s`` seconds, then reports ``val_accuracy`` (rising with the epoch, a fixed
function of the rest of the configuration, so configurations rank apart), ``val_loss`` and
``resumed_from`` (the epoch of the checkpoint this attempt started from, 0: none), with a checkpoint
(a real directory, through the engine's report). A resumed trial continues from its last checkpoint."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from light_trainable import score
from pydantic import BaseModel, ConfigDict

METRICS = ("val_accuracy", "val_loss", "resumed_from")


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")
    epoch_s: float = 0.2


def train(cfg: Config, report) -> None:
    start = 0
    if (restored := report.restore()) is not None:
        start = json.loads((Path(restored) / "state.json").read_text())["epoch"]
    final = score(cfg.model_dump(exclude={"epoch_s"}))
    for epoch in range(start + 1, report.info.epochs + 1):
        time.sleep(cfg.epoch_s)
        accuracy = final * (1.0 - 0.5**epoch)
        metrics = {"val_accuracy": accuracy, "val_loss": 1.0 - accuracy, "resumed_from": start}
        with tempfile.TemporaryDirectory(prefix="paced-ckpt-") as ckpt:
            (Path(ckpt) / "state.json").write_text(json.dumps({"epoch": epoch}))
            report(epoch=epoch, metrics=metrics, checkpoint=ckpt)

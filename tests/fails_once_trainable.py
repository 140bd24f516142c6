"""A test-only trainable without torch, for tests of how a sweep handles a failed trial: it
checkpoints every epoch (a real directory, through the engine's report) and continues from the
last checkpoint it is given back; a trial with dropout >= 0.5 raises in epoch 2 on its first
attempt only (a marker file in the trial's working folder remembers the attempt). Each epoch also
reports ``resumed_from``: the epoch of the checkpoint this attempt started from (0: none)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

METRICS = ("val_accuracy", "resumed_from")
ERROR = "injected failure on the first attempt"


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")
    dropout: float = 0.0
    record_to: str | None = None  # a folder: the path report.restore() gave, for the test to check


def train(cfg: Config, report) -> None:
    marker = Path("attempted")  # Tune runs each trial in a folder of its own, the same one on resume
    start = 0
    if (restored := report.restore()) is not None:
        start = json.loads((Path(restored) / "state.json").read_text())["epoch"]
        if cfg.record_to:
            (Path(cfg.record_to) / "restored_from").write_text(restored)
    for epoch in range(start + 1, report.info.epochs + 1):
        if cfg.dropout >= 0.5 and epoch == 2 and not marker.exists():
            marker.touch()
            raise RuntimeError(ERROR)
        metrics = {"val_accuracy": 0.5 + 0.1 * epoch - 0.2 * cfg.dropout, "resumed_from": start}
        with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt:
            (Path(ckpt) / "state.json").write_text(json.dumps({"epoch": epoch}))
            report(epoch=epoch, metrics=metrics, checkpoint=ckpt)

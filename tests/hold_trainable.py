"""A test trainable for how many trials run at once (tests/test_resources.py), without torch: each
trial marks its start in ``cfg.folder`` and holds until ``cfg.hold + 1`` trials have started, or
``cfg.grace`` seconds after ``cfg.hold`` had, so that one trial too many would be seen running."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict

METRICS = ("val_accuracy",)


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")
    folder: str
    hold: int
    grace: float = 4.0  # a worker's start on a loaded machine: time for a trial too many to begin
    timeout: float = 120.0


def train(cfg: Config, report) -> None:
    folder = Path(cfg.folder)
    (folder / uuid.uuid4().hex).touch()
    began = time.monotonic()
    reached = None
    while time.monotonic() - began < cfg.timeout:
        started = sum(1 for _ in folder.iterdir())
        if started > cfg.hold:
            break
        if started == cfg.hold:
            reached = reached or time.monotonic()
            if time.monotonic() - reached > cfg.grace:
                break
        time.sleep(0.05)
    report(epoch=1, metrics={"val_accuracy": 1.0})

"""A test trainable that reports which modules its Ray worker has imported (tests/test_layout.py)."""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")


def train(cfg: Config, report) -> None:
    report(epoch=1, metrics={"modules": json.dumps(sorted(sys.modules))})

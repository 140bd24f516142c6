"""A test trainable that reports how its Ray worker process came to be (tests/test_warm_workers.py)."""

from __future__ import annotations

import sys

import psutil
from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")


def train(cfg: Config, report) -> None:
    report(epoch=1, metrics={
        "score": 1.0,
        "dynamo_preloaded": float("torch._dynamo" in sys.modules),  # this trainable builds no optimizer
        "process_started": psutil.Process().create_time(),
    })

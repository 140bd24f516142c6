"""A test trainable that reports which modules its Ray worker had imported when the trial began, and
the torch threads it then gets (tests/test_layout.py)."""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    model_config = ConfigDict(extra="allow")


def train(cfg: Config, report) -> None:
    modules = json.dumps(sorted(sys.modules))
    import torch

    report(epoch=1, metrics={"modules": modules, "torch_threads": torch.get_num_threads()})

"""A trainable that does no work: one report, no checkpoint. What remains of a sweep's wall
time over it is orchestration (Ray Tune, the MLflow writer, the driver).

The benchmark names it by import string (``trainable: benchmarks.trivial``); it is not registered.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

METRICS = ("score",)


class AnyData(BaseModel):
    """Whatever dataset options the spec carries; the trivial trainable reads none of them."""

    model_config = ConfigDict(extra="allow")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: float = Field(0.0, description="the sampled parameter, reported back as the score")
    data: AnyData = Field(default_factory=AnyData, description="ignored: set by the engine")
    epochs: int = Field(1, ge=1, description="epochs reported")
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1


def train(cfg: Config, report) -> None:
    for epoch in range(1, cfg.epochs + 1):
        report(epoch=epoch, metrics={"score": cfg.x})

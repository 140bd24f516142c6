"""The reporting contract between a trainable and whatever runs it (the whole contract:
``trainables/contract.py``)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TrialInfo:
    """What the engine supplies to every trial, as ``report.info``: the same for every trainable,
    whatever its config declares.

    >>> TrialInfo(epochs=3).epochs
    3
    """

    epochs: int = 1  # the sweep's budget.max_epochs: train at most this many epochs
    seed: int = 0  # this trial's seed (drawn from the sweep's seed; the same for a configuration's repeat)
    device: str = "cpu"  # the torch device Ray assigned ("cuda" for a GPU trial)
    checkpoint_every: int = 1  # epochs between checkpoints offered (the engine: 1, and it keeps what it needs)
    data: dict[str, Any] = field(default_factory=dict)  # the spec's dataset, with any swept space.data fields


# Fields of TrialInfo a pydantic Config may declare to have them filled in (a convenience).
ENGINE_FIELDS = tuple(f.name for f in fields(TrialInfo))

# How a trainable may end on its own; the engine adds completed / stopped_by_asha / failed.
END_REASONS = ("early_stopped", "diverged")


class Report(Protocol):
    info: TrialInfo

    def __call__(
        self,
        *,
        epoch: int,
        metrics: dict[str, float],
        checkpoint: str | None = None,
        end: str | None = None,
    ) -> None:
        """Record one finished epoch (1-based). ``checkpoint`` is a directory the callee may copy
        before returning; ``end`` is one of END_REASONS on the trainable's last report."""

    def restore(self) -> str | None:
        """Directory of the last checkpoint to resume from, or None for a fresh start."""


@dataclass
class ListReport:
    """Collects reports in memory; unit tests call ``train(cfg, ListReport())`` without Ray.

    >>> r = ListReport(); r(epoch=1, metrics={"val_accuracy": 0.5}); r.epochs
    [1]
    """

    resume_from: str | None = None
    info: TrialInfo = field(default_factory=TrialInfo)
    records: list[dict] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory = field(default_factory=lambda: tempfile.TemporaryDirectory(prefix="listreport-"))

    def __call__(self, *, epoch, metrics, checkpoint=None, end=None):
        self.records.append({"epoch": epoch, **metrics, "end": end})
        if checkpoint is not None:
            # The trainable deletes its directory after report returns, as it may under Ray.
            kept = Path(self._tmp.name) / f"epoch_{epoch:04d}"
            shutil.copytree(checkpoint, kept, dirs_exist_ok=True)
            self.checkpoints.append(str(kept))

    def restore(self):
        return self.resume_from

    @property
    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    @property
    def end(self) -> str | None:
        return self.records[-1]["end"] if self.records else None

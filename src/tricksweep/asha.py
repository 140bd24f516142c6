"""ASHA's rung arithmetic: where a trial can be stopped, and what a sweep is expected to spend.

    >>> rungs(30, grace=2, factor=3)
    [2, 6, 18]
    >>> round(expected_epochs(32, 30, grace=2, factor=3))
    164
"""

from __future__ import annotations

import math


def rungs(max_epochs: int, grace: int, factor: float) -> list[int]:
    """Epochs at which ASHA can stop a trial: Ray's milestones grace * factor**k, reached at the
    first whole epoch >= each (a milestone at max_epochs stops nothing: the trial is done)."""
    count = int(math.log(max_epochs / grace) / math.log(factor) + 1)  # Ray's MAX_RUNGS
    return sorted({e for k in range(count) if (e := math.ceil(grace * factor**k)) < max_epochs})


def expected_epochs(trials: int, max_epochs: int, grace: int, factor: float) -> float:
    """Epochs run if each rung keeps exactly 1/factor of the trials reaching it."""
    marks = rungs(max_epochs, grace, factor) + [max_epochs]
    total, alive, previous = 0.0, float(trials), 0
    for i, mark in enumerate(marks):
        total += alive * (mark - previous)
        previous = mark
        if i < len(marks) - 1:
            alive = max(alive / factor, 1.0)
    return total

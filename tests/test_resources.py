"""Fractional resources pack trials: tested on a custom resource standing in for a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_spec
from mlflow.tracking import MlflowClient

from tricksweep.runner import run_sweep
from tricksweep.spec import load_spec
from tricksweep.tracking import PARENT_TAG

pytestmark = pytest.mark.slow  # whole sweeps on Ray: the full suite's, not the fast lane's


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


# (0.25, 3): max_concurrent_trials caps below what the share allows (Ray's variant generator
# ignored Tune's cap until it was handed its own).
@pytest.mark.parametrize("share, max_concurrent, expected", [(0.25, None, 4), (0.25, 3, 3)])
def test_fractional_share_packs_that_many_trials(
    ray_local, tmp_path: Path, tracking_uri, share: float, max_concurrent: int | None, expected: int
):
    # The trials hold until one too many has started (or a grace period after `expected` have): the
    # subject is how many Ray runs at once, so the trainable does no training (tests/hold_trainable.py).
    started = tmp_path / "started"
    started.mkdir()
    spec = write_spec(
        tmp_path,
        f"""\
name: packing
trainable: hold_trainable
metric: val_accuracy
mode: max
budget: {{trials: {expected + 1}, max_epochs: 1}}
scheduler: {{type: none}}
registry: false
resources: {{cpu: 0.125, custom: {{accel: {share}}}}}
max_concurrent_trials: {"null" if max_concurrent is None else max_concurrent}
space:
  folder: {started}
  hold: {expected}
""",
    )
    uri = tracking_uri
    outcome = run_sweep(load_spec(spec), tracking_uri=uri, storage=str(tmp_path / "runs"), echo=lambda _: None)
    assert outcome.errors == 0
    client = MlflowClient(uri)
    children = client.search_runs(
        [outcome.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'"
    )
    intervals = [(c.info.start_time, c.info.end_time) for c in children]
    # One trial more than the expected peak, so a peak of `expected` is the limit at work: CPUs alone
    # would allow 8 at once (0.125 each on the session's 1 CPU); the 1.0 'accel' allows 1/share; the cap, fewer.
    assert len(children) == expected + 1
    assert max_overlap(intervals) == expected

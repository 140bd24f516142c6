"""Scenario (run in its own process by tests/test_faults.py): a 3-node cluster on one machine,
a sweep, and one worker node killed without grace while trials run on it.

Usage: python node_crash.py SPEC TRACKING_URI STORAGE  -> prints one JSON line with the outcome.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time

import ray
import ray.tune
from local_cluster import head_only_cluster
from mlflow.tracking import MlflowClient

from tricksweep.runner import resume_sweep, run_sweep
from tricksweep.spec import load_spec
from tricksweep.tracking import STATUS_TAG, SWEEP_TAG


def running_with_history(client: MlflowClient, min_epochs: int) -> int:
    experiment = client.get_experiment_by_name("node_crash")
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'child'")
    return sum(
        1
        for r in runs
        if STATUS_TAG not in r.data.tags and len(client.get_metric_history(r.info.run_id, "val_accuracy")) >= min_epochs
    )


def main(spec_path: str, uri: str, storage: str) -> None:
    cluster = head_only_cluster()
    atexit.register(lambda: (ray.shutdown(), cluster.shutdown()))  # on a crash too: Ray's address file goes
    cluster.add_node(num_cpus=2)
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    result: dict = {}

    def record(outcome) -> None:
        result.update(errors=outcome.errors, trials=len(outcome.trials), statuses=[r.status for r in outcome.trials])
        grid = ray.tune.ExperimentAnalysis(outcome.experiment_path)
        # Every epoch each trial reported to Tune, across its retries, in order.
        result["epochs_reported"] = {t: df["epoch"].tolist() for t, df in grid.trial_dataframes.items()}

    def sweep() -> None:
        outcome = run_sweep(load_spec(spec_path), tracking_uri=uri, storage=storage, echo=lambda _: None)
        record(outcome)
        # Ray 2.60 errors a trial, whatever max_failures says, when the node dies while Tune resets
        # a reused actor there for it. Such trials are recorded as failed; `tricksweep resume` runs them.
        failed = [r.trial_id for r in outcome.trials if r.status == "failed"]
        result["first_pass_failed"] = failed
        result["first_pass_failed_in_mlflow"] = sorted(
            r.data.tags.get(STATUS_TAG, "")
            for r in client.search_runs(
                [outcome.experiment_id],
                filter_string=f"tags.`{SWEEP_TAG}` = 'child' and tags.`{STATUS_TAG}` = 'failed'",
            )
        )
        if failed:
            record(resume_sweep("node_crash", tracking_uri=uri, echo=lambda _: None))

    client = MlflowClient(uri)
    client.search_experiments()  # create the store before the sweep does: concurrent migrations race
    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.monotonic() + 240
    while running_with_history(client, 2) < 3:  # trials on both workers, each with checkpoints
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("no trials in flight to interrupt")
        time.sleep(0.2)
    cluster.remove_node(doomed, allow_graceful=False)
    result["killed_at_s"] = round(time.monotonic() - deadline + 240, 1)
    thread.join()
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])

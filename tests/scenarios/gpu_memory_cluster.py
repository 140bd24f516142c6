"""Scenario (run in its own process by tests/test_gpu_memory.py): a sweep asking for GPU memory on a
3-node cluster whose two worker nodes advertise ``gpu_memory_mib: 2000`` and no GPU (the stand-in
for a GPU's memory on a CPU machine). The head runs no trials.

Usage: python gpu_memory_cluster.py SPEC STORAGE TRACKING_URI  -> one JSON line with the outcome.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

from local_cluster import head_only_cluster

from tricksweep.runner import run_sweep

NODE_MEMORY_MIB = 2000


def main(spec_path: str, storage: str, tracking_uri: str) -> None:
    cluster = head_only_cluster()
    atexit.register(cluster.shutdown)  # on a crash too: Ray's address file goes
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={"gpu_memory_mib": NODE_MEMORY_MIB})
    cluster.wait_for_nodes()
    outcome = run_sweep(spec_path, address=cluster.address, tracking_uri=tracking_uri, storage=storage,
                        echo=lambda _: None)
    print(json.dumps({
        "status": outcome.status, "errors": outcome.errors, "experiment_path": outcome.experiment_path,
        "experiment_id": outcome.experiment_id, "parent_run_id": outcome.parent_run_id,
        "best": outcome.best.trial_id if outcome.best else None,
        "trials": {t.trial_id: {"status": t.status, "width": t.params.get("width")} for t in outcome.trials},
        "leaderboard": [[t.trial_id for t in row.trials] for row in outcome.leaderboard],
    }))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(*sys.argv[1:4])

"""Scenario (run in its own process by tests/test_shipping.py): a sweep of the user's own function
trainable, which imports a helper module of theirs, on a 3-node cluster whose worker nodes never
saw the user's folder on their sys.path.

The head runs no trials (0 CPUs); two worker nodes of 1 CPU each run them. The user's folder is
neither installed nor on anyone's PYTHONPATH, and the driver runs from another folder (Ray puts
the driver's cwd on the workers' sys.path). ``run_sweep(..., address=cluster)`` must ship it.

Usage: python user_code_cluster.py SPEC STORAGE TRACKING_URI  -> one JSON line with the outcome.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

from local_cluster import head_only_cluster

from tricksweep.runner import run_sweep


def main(spec_path: str, storage: str, tracking_uri: str) -> None:
    cluster = head_only_cluster()
    atexit.register(cluster.shutdown)  # on a crash too: Ray's address file goes
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    outcome = run_sweep(spec_path, address=cluster.address, tracking_uri=tracking_uri, storage=storage,
                        echo=lambda _: None)
    statuses = [t.status for t in outcome.trials]
    print(json.dumps({"errors": outcome.errors, "statuses": statuses, "head": cluster.head_node.unique_id}))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(*sys.argv[1:4])

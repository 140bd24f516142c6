"""Scenario (run in its own process by tests/test_transfer.py): trials on a node that cannot see
the driver's weights file still start from those weights.

A 2-node cluster on one machine: the head (the driver's node) runs no trials, the worker node
has a cache folder of its own. The sweep's ``init.source`` is a file on the driver's disk, and
that file is deleted after the Tuner is built and before any trial starts.

Usage: python remote_source.py SPEC STORAGE WORKER_CACHE  -> prints one JSON line with the outcome.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import ray
import torch
from local_cluster import head_only_cluster

from trainables.classifier import CHECKPOINT_FILE
from tricksweep.runner import build_tuner
from tricksweep.spec import load_spec


def main(spec_path: str, storage: str, worker_cache: str) -> None:
    cluster = head_only_cluster()
    atexit.register(lambda: (ray.shutdown(), cluster.shutdown()))  # on a crash too: Ray's address file goes
    cluster.add_node(num_cpus=2, env_vars={"TRICKSWEEP_CACHE_DIR": worker_cache})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    loaded = load_spec(spec_path)
    source = Path(loaded.raw_space["init"]["source"])
    data = source.read_bytes()
    weights = torch.load(source, weights_only=True)["model"]
    tuner = build_tuner(loaded, storage, "remote-source", [])
    source.unlink()  # from here on the weights exist only in what the Tuner carries
    grid = tuner.fit()

    frozen_equal = []
    for result in grid:
        with result.checkpoint.as_directory() as folder:
            trained = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)["model"]
        # freeze: all_but_head keeps every block exactly as the source had it
        blocks = [k for k in weights if k.startswith("blocks.") and not k.endswith("num_batches_tracked")]
        frozen_equal.append(all(torch.equal(weights[k], trained[k]) for k in blocks))
    shipped = Path(worker_cache) / "sources" / "shipped"
    copies = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "errors": grid.num_errors,
                "trials": len(grid),
                "frozen_blocks_equal_source": frozen_equal,
                "shipped_copies": copies,
                "copy_equals_source": [(shipped / c).read_bytes() == data for c in copies],
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(*sys.argv[1:4])

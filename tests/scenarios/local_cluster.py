"""The head of the scenarios' clusters (ray.cluster_utils, every node a process tree on this machine)."""

from __future__ import annotations

from ray.cluster_utils import Cluster


def head_only_cluster() -> Cluster:
    """A head that runs no trials (0 CPUs: they go to the nodes a scenario adds) and no dashboard:
    no scenario reads it, and the heads of clusters started at once on one machine would all ask
    for its port, 8265."""
    return Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})

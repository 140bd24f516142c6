"""cluster.yaml validates offline against the JSON schema shipped in the Ray wheel, plus the
cross-field rules tricksweep relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from conftest import ROOT


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_matches_rays_cluster_launcher_schema(cluster):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_node_types_are_consistent(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert types[cluster["head_node_type"]]["resources"].get("CPU") == 0, "trials must not run on the head"
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert 0 <= node.get("min_workers", 0) <= node["max_workers"] <= cluster["max_workers"], name
        instance = node["node_config"]["InstanceType"]
        if re.match(r"^(g\d|p\d)", instance):  # AWS GPU families: the GPU must be declared to Ray
            assert node["resources"].get("GPU", 0) >= 1, f"{name}: {instance} has a GPU that Ray is not told about"


def test_every_ray_start_turns_token_auth_on_with_a_token_kept_outside_the_repository(cluster):
    starts = [
        c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key] if "ray start" in c
    ]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts)
    # the token reaches every node (file_mounts go to all of them) at Ray's default path, from the laptop's home
    mounted = cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"]
    assert mounted.startswith("~/.ray/")
    assert "export RAY_AUTH_MODE=token" in " ".join(cluster["setup_commands"])  # drivers started by `ray exec`


def test_services_listen_on_loopback_only(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert re.search(r"mlflow server --host 127\.0\.0\.1\b", head)
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head  # jobs on the head find the server


def test_shared_storage_is_mounted_on_every_node(cluster):
    setup = " ".join(cluster["setup_commands"])  # setup_commands run on head and workers alike
    assert "/mnt/shared" in setup and "mount" in setup
    assert "/mnt/shared" in (ROOT / "cluster.yaml").read_text().split("tricksweep submit", 1)[1].splitlines()[0]


def test_gpu_workers_start_the_mps_daemon_before_ray(cluster):
    # Without MPS, packed fractional-GPU trials time-slice the GPU (benchmarks/gpu_check.py --mps).
    commands = [c for c in cluster["worker_start_ray_commands"]]
    mps = next(i for i, c in enumerate(commands) if "nvidia-cuda-mps-control -d" in c)
    start = next(i for i, c in enumerate(commands) if "ray start" in c)
    assert mps < start, "the MPS daemon must run before the raylet starts the trials' processes"

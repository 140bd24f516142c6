"""GPU memory as a resource: sizes in the spec, what nodes advertise, trials packed by memory, an
out-of-memory error retried with a larger share, a configuration too large ending `infeasible`.
On the CPU: a custom resource stands in for a GPU's memory and a test trainable raises CUDA's
out-of-memory error below a chosen share."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TESTS
from mlflow.tracking import MlflowClient

from tricksweep import gpu
from tricksweep.errors import SpecError
from tricksweep.leaderboard import rank
from tricksweep.records import TrialRecord
from tricksweep.spec import load_spec

BASE = {"name": "mem", "metric": "val_accuracy", "mode": "max", "budget": {"trials": 2, "max_epochs": 2}}


@pytest.mark.parametrize("text, mib", [("12GiB", 12288), ("800MiB", 800), ("1.5GiB", 1536), ("0.5MiB", 1)])
def test_sizes_are_read_in_mib(text: str, mib: int):
    assert gpu.parse_size(text) == mib


@pytest.mark.parametrize("resources, expected", [
    ({"gpu_memory": "12GB"}, ["resources.gpu_memory", "'12GB'", "unit 'GB' is not one of MiB, GiB, TiB"]),
    ({"gpu_memory": "lots"}, ["resources.gpu_memory", "'lots'", "must be `auto` or a size"]),
    ({"gpu_memory": "0MiB"}, ["resources.gpu_memory", "at least 1MiB"]),
    ({"gpu_memory": "4GiB", "gpu": 0.5}, ["resources", "give `gpu` or `gpu_memory`, not both"]),
])
def test_a_bad_memory_request_is_one_line_naming_field_value_and_rule(resources: dict, expected: list[str]):
    with pytest.raises(SpecError) as err:
        load_spec({**BASE, "resources": resources})
    line = str(err.value)
    assert "\n" not in line
    for piece in expected:
        assert piece in line, line


def test_auto_and_sizes_load():
    assert load_spec({**BASE, "resources": {"gpu_memory": "auto"}}).spec.resources.gpu_memory_mib is None
    assert load_spec({**BASE, "resources": {"gpu_memory": "2GiB"}}).spec.resources.gpu_memory_mib == 2048


def test_cuda_out_of_memory_is_told_from_rays_host_memory_error():
    assert gpu.is_out_of_memory("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert gpu.is_out_of_memory("RuntimeError: CUDA error: out of memory")
    assert not gpu.is_out_of_memory("ray.exceptions.OutOfMemoryError: Task was killed due to the node running "
                                    "low on memory.")


def test_the_shape_leaves_out_floats_and_the_seed():
    one = {"seed": 1, "lr": 0.1, "model": {"name": "cnn", "width": 16}, "batch_size": 64}
    other = {"seed": 2, "lr": 0.003, "model": {"name": "cnn", "width": 16}, "batch_size": 64}
    assert gpu.shape_key(one) == gpu.shape_key(other)
    assert gpu.shape_key(one) != gpu.shape_key({**one, "batch_size": 128})
    assert gpu.need_from_peak(1000) == 1664  # 1000 * 1.1 + 512, rounded up to 64 MiB


def test_the_layout_is_the_smallest_device_and_the_fraction_follows_the_memory():
    nodes = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 2, gpu.RESOURCE: 2 * 81559}},
             {"Alive": True, "Resources": {"CPU": 8, "GPU": 1, gpu.RESOURCE: 24000}},
             {"Alive": False, "Resources": {"GPU": 1, gpu.RESOURCE: 1000}},
             {"Alive": True, "Resources": {"CPU": 4}}]
    layout = gpu.DeviceLayout.from_nodes(nodes)
    assert layout == gpu.DeviceLayout(24000, gpus=True)
    assert layout.share(6000, cpus=1) == {"CPU": 1, gpu.RESOURCE: 6000.0, "GPU": 0.25}
    assert layout.share(50000, cpus=1)["GPU"] == 1.0  # at most one device
    stand_in = gpu.DeviceLayout.from_nodes([{"Resources": {"CPU": 2, gpu.RESOURCE: 4000}}])
    assert stand_in == gpu.DeviceLayout(4000, gpus=False) and "GPU" not in stand_in.share(1000, cpus=1)
    assert gpu.DeviceLayout.from_nodes(nodes[3:]) is None


def test_an_infeasible_trial_is_never_best():
    history = {"val_accuracy": {1: 0.99}}
    trials = [TrialRecord("a", "trial-a", "infeasible", {"w": 64}, history),
              TrialRecord("b", "trial-b", "completed", {"w": 8}, {"val_accuracy": {1: 0.5}})]
    board = rank(trials, "val_accuracy", "max", repeats=False)
    assert board[0].best_trial.trial_id == "b" and board[-1].best_value is None


def test_cluster_yaml_workers_advertise_their_gpus_memory(tmp_path: Path):
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    [start] = [c for c in cluster["worker_start_ray_commands"] if "ray start" in c]
    measure = start.split('--resources="$(', 1)[1].rsplit(')"', 1)[0]
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '81559\\n81559\\n'\n")  # two H100s, as nvidia-smi prints them
    fake.chmod(0o755)
    out = subprocess.run(["bash", "-c", measure], env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {gpu.RESOURCE: 163118}
    worker = cluster["available_node_types"]["gpu_worker"]["resources"]
    assert worker[gpu.RESOURCE] > 0  # the autoscaler must know which node type fits a memory request


def test_without_a_gpu_nothing_is_sampled_and_releasing_memory_is_harmless():
    if gpu.local_gpu_memory_mib():
        pytest.skip("a GPU is here: benchmarks/gpu_check.py --packing checks the sampler")
    assert gpu.UsageSampler.start() is None
    gpu.release_memory()


# -- on a cluster ------------------------------------------------------------------------------

NODE_MIB = 2000  # tests/scenarios/gpu_memory_cluster.py's worker nodes
SPEC = """\
name: gpu_memory
trainable: oom_share_trainable
metric: val_score
mode: max
budget: {trials: 4, max_epochs: 2}
scheduler: {type: none}
searcher: optuna_tpe
stop_on_repeated_errors: 2
resources: {cpu: 0.25, gpu_memory: 1000MiB}
seed: 9  # draws widths 16, 64, 16, 8
space:
  width: {choice: [8, 16, 64]}
  lr: {loguniform: [0.01, 0.1]}
"""


def peak_per_node(attempts: list[dict], key: str) -> int:
    """The most of ``key`` (1: attempts, "share": MiB) running at once on any one node."""
    peak = 0
    for node in {a["node"] for a in attempts}:
        mine = [a for a in attempts if a["node"] == node]
        amount = [1 if key == 1 else a[key] for a in mine]
        pairs = list(zip(mine, amount, strict=True))
        events = sorted([(a["start"], n) for a, n in pairs] + [(a["end"], -n) for a, n in pairs])
        running = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
    return peak


@pytest.mark.scenario
def test_trials_pack_by_memory_and_out_of_memory_is_retried_with_a_larger_share(tmp_path: Path, new_store):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(TESTS / "oom_share_trainable.py", project)
    (project / "spec.yaml").write_text(SPEC)
    log = tmp_path / "attempts.jsonl"
    uri = new_store(tmp_path)
    done = subprocess.run(
        [sys.executable, str(TESTS / "scenarios" / "gpu_memory_cluster.py"), str(project / "spec.yaml"),
         str(tmp_path / "runs"), uri],
        cwd=tmp_path,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "OOM_TRIAL_LOG": str(log), "OOM_TRIAL_COMPANY": "4"},
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    trials = outcome["trials"]
    widths = {t["width"] for t in trials.values()}
    assert widths == {8, 16, 64}, trials  # the seed draws every size

    # Packing: the four first attempts wait for each other, so they ran at once; a node's 2000 MiB hold
    # two of 1000 MiB (its CPUs would take eight): two per node, never more.
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    assert peak_per_node(attempts, 1) == 2
    assert peak_per_node(attempts, "share") <= NODE_MIB

    # Out of memory: width 16 (needs 1500) is retried at 2000 MiB from its epoch-1 checkpoint and
    # finishes; width 64 (needs 5000) runs out on the whole 2000 MiB stand-in GPU too: infeasible.
    shares = {w: sorted({a["share"] for a in attempts if a["width"] == w}) for w in (8, 16, 64)}
    assert shares == {8: [1000], 16: [1000, 2000], 64: [1000, 2000]}, shares
    assert all(a["first_epoch"] == 2 for a in attempts if a["share"] > 1000)  # each retry resumed from epoch 1
    expected = {8: "completed", 16: "completed", 64: "infeasible"}
    assert all(t["status"] == expected[t["width"]] for t in trials.values()), trials
    assert outcome["status"] == "completed"  # the repeated-error stop does not take OOM ends for a broken sweep

    client = MlflowClient(uri)
    runs = {r.data.tags["tricksweep.trial_id"]: r for r in client.search_runs(
        [outcome["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{outcome['parent_run_id']}'")}
    for trial_id, trial in trials.items():
        tags = runs[trial_id].data.tags
        assert tags["tricksweep.status"] == expected[trial["width"]]
        assert tags.get("tricksweep.oom_retries", "0") == {8: "0", 16: "1", 64: "1"}[trial["width"]], tags
    # Never best, though the widest net may well score best after its one epoch.
    infeasible = {i for i, t in trials.items() if t["status"] == "infeasible"}
    assert outcome["best"] not in infeasible
    parent = client.get_run(outcome["parent_run_id"]).data.tags
    assert parent.get("tricksweep.best_trial") not in infeasible
    board = client.download_artifacts(outcome["parent_run_id"], "leaderboard.csv", str(tmp_path))
    rows = Path(board).read_text().splitlines()[1:]
    assert all(",infeasible," in row for row in rows[-len(infeasible):]), rows  # ranked last, with no value

    # TPE is told the infeasible configurations are infeasible: PRUNED with a violated constraint,
    # which TPE's split puts in its "bad" group (a FAIL it would ignore).
    [state] = Path(outcome["experiment_path"]).glob("searcher-state-*.pkl")
    searcher = pickle.loads(state.read_bytes())  # OptunaRepeats' state as Tune saved it
    study = searcher["inner"]._ot_study
    for trial_id in infeasible:
        group = searcher["group_of"][trial_id]
        assert searcher["told"][group] == "INFEASIBLE"
        told = study.trials[searcher["inner"]._ot_trials[group].number]
        assert told.state.name == "PRUNED" and told.constraints == {"gpu_memory": 1.0}, told


def test_the_report_draws_a_gpu_timeline_only_from_trials_that_recorded_gpu_use(tmp_path: Path, new_store):
    import matplotlib

    from tricksweep import plots
    from tricksweep.records import RecordedSweep
    from tricksweep.report import gpu_spans
    from tricksweep.tracking import GPU_TAG

    matplotlib.use("Agg")
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("timeline")
    parent = client.create_run(experiment).info.run_id
    trials = []
    runs = [("10.0.0.1/0", 30000), ("10.0.0.1/0", 50000), ("10.0.0.1/1", 20000), (None, 0)]  # the last: on the CPU
    for i, (gpu_tag, used) in enumerate(runs):
        tags = {"mlflow.parentRunId": parent, **({GPU_TAG: gpu_tag} if gpu_tag else {})}
        run = client.create_run(experiment, start_time=1_000_000 + 1000 * i, tags=tags)
        for epoch in (1, 2):
            stamp = 1_000_000 + 1000 * i + 20_000 * epoch
            if gpu_tag:
                client.log_metric(run.info.run_id, "gpu_device_memory_used_mib", used * epoch / 2, stamp, epoch)
                client.log_metric(run.info.run_id, "gpu_device_memory_total_mib", 81559, stamp, epoch)
                client.log_metric(run.info.run_id, "gpu_utilization", 40.0 * epoch, stamp, epoch)
        client.set_terminated(run.info.run_id, end_time=1_000_000 + 1000 * i + 45_000)
        trials.append(TrialRecord(f"t{i}", f"trial-{i}", "completed", {}, {}, run.info.run_id))
    sweep = RecordedSweep("timeline", client.tracking_uri, parent, {"metric": "m", "mode": "max"}, trials)
    spans = gpu_spans(sweep)
    assert [(s.gpu, s.trial) for s in spans] == [("10.0.0.1/0", "trial-0"), ("10.0.0.1/0", "trial-1"),
                                                  ("10.0.0.1/1", "trial-2")]
    assert spans[0].utilization == 60.0 and spans[1].memory[-1][1:] == (50000, 81559)
    plots.plot_gpu_timeline(spans, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 1000
    assert gpu_spans(RecordedSweep("cpu", client.tracking_uri, parent, {}, trials[3:])) == []

"""GPU check, under 5 minutes on one GPU: is the trainable near a hand-tuned loop, and does
packing several small trials on one GPU pay?

    python benchmarks/gpu_check.py [--out gpu.json]     # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --smoke              # tiny sizes; on the CPU when there is no GPU
    python benchmarks/gpu_check.py --packing --mps      # G3-G5 instead: sweeps packed by GPU memory

G1  images/s of ``trainables.classifier.train`` with the ``resnet`` model (``cnn`` when
    trainables.models has no ResNet) on CIFAR-shaped synthetic tensors, against an
    airbench-style bare loop on the same GPU: data resident on the device, normalized once,
    channels_last, bf16 autocast, same model/optimizer/batch, one validation pass per epoch.
    Goal >= 0.9.
    The trainable's defaults on CUDA do the same (``precision: auto`` = bf16, ``channels_last``
    null = on); a second row adds ``compile: true``, against the same uncompiled loop.
G2  four trials of the small ``cnn`` packed on one GPU (``gpu: 0.25`` each, through Ray Tune)
    against one trial alone: total images/s while all of them run (each trial's median epoch
    time over the epochs that end inside the window where every trial is past its first epoch
    and none has finished). Goal >= 2.5x.

G3  (--packing) one sweep of mixed sizes (ResNet widths 16-128, batch 128-1024, lr varied: 4 shapes,
    2 trials each) run with ``resources: {gpu_memory: auto}``, with static fractions (``gpu: 0.25``,
    ``gpu: 0.125``: the best one, in hindsight, is the peer) and with ``gpu: 1``: total images/s
    (images trained / sweep wall time) and the wall time. Goal: auto >= 1.5x ``gpu: 1`` and >= the
    best static fraction, no trial left failed or infeasible.
G4  (--packing) a trial too large for its share (a wide ResNet at batch 1024 asking ``gpu_memory:
    2GiB``, enforced by torch's per-process memory fraction): out of memory, retried with larger
    shares from its checkpoint, finishes. Reports the retries.
G5  (--packing) memory given back: two trials one after the other in one reused actor; the second
    starts with what torch's allocator still held of the first. Goal <= 8 MiB.
On the CPU (``--smoke`` without a GPU) the sweeps ask for ``gpu_memory_mib`` that local Ray
advertises as a stand-in, G4 uses tests/oom_share_trainable.py, and only G4 (the policy) is judged.

Synthetic data: ``trainables.data.load`` is replaced in each process by a loader returning
random uint8 tensors shaped like CIFAR-10, so no download is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PLACEHOLDER_DATA = {"name": "digits"}  # validated by the Config, never read: load() is patched


def synthetic_split(n_train: int, n_val: int, shape=(3, 32, 32), classes: int = 10, seed: int = 0):
    import torch

    from trainables.data import Split

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_val, *shape), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, classes, (n_train + n_val,), generator=gen)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


@contextlib.contextmanager
def patched_data(split) -> Iterator[None]:
    from trainables import data

    original = data.load
    data.load = lambda options: split
    try:
        yield
    finally:
        data.load = original


def model_choice(preferred: str = "resnet") -> tuple[dict, str]:
    from trainables.models import MODELS

    if preferred in MODELS:
        return {"name": preferred, "width": 64, "depth": 3}, preferred
    return {"name": "cnn", "width": 64}, f"cnn (no '{preferred}' in trainables.models)"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trainable_rate(raw: dict, split, device: str) -> float:
    """Training images/s of ``classifier.train`` after a one-epoch warm-up call."""
    from benchmarks.peers import NullReport
    from trainables import classifier

    cfg = classifier.Config.model_validate({**raw, "device": device})
    with patched_data(split):
        classifier.train(cfg.model_copy(update={"epochs": 1}), NullReport())  # warm-up: cuDNN autotune, allocator
        _sync(device)
        started = time.perf_counter()
        classifier.train(cfg, NullReport())
        _sync(device)
    return len(split.y_train) * cfg.epochs / (time.perf_counter() - started)


def airbench_rate(raw: dict, split, device: str) -> float:
    """The airbench recipe's mechanics on the same model and optimizer: tensors on the device,
    normalized once, channels_last, bf16 autocast, randperm slices, no per-batch host syncs."""
    import torch
    import torch.nn.functional as F

    from trainables import classifier

    cfg = classifier.Config.model_validate({**raw, "device": device})
    dev = torch.device(device)
    # bf16 autocast on the GPU; the CPU fallback only checks the script runs, where bf16 is slow.
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def run(epochs: int) -> None:
        x = split.x_train.to(dev).float().div_(255)
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        y = split.y_train.to(dev)
        xv = ((split.x_val.to(dev).float().div_(255) - mean) / std).contiguous(memory_format=torch.channels_last)
        yv = split.y_val.to(dev)
        torch.manual_seed(cfg.seed)
        model = cfg.model.build(split.shape, split.classes, cfg.batch_norm, cfg.dropout)
        cfg.init.apply(model)
        model = model.to(dev, memory_format=torch.channels_last)
        opt = cfg.optimizer.build(model.parameters())
        n, bs = len(y), cfg.batch_size
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(n, device=dev).split(bs):
                with amp:
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad(), amp:
                correct = sum((model(xb).argmax(1) == yb).sum() for xb, yb in zip(xv.split(2048), yv.split(2048)))
            float(correct)

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run(1)  # warm-up
    _sync(device)
    started = time.perf_counter()
    run(cfg.epochs)
    _sync(device)
    return len(split.y_train) * cfg.epochs / (time.perf_counter() - started)


def packed_trial(config: dict[str, Any], fixed: dict[str, Any], sizes: dict[str, int], device: str,
                 barrier: str) -> None:
    """A Tune function trainable: synthetic CIFAR-shaped data in this worker, a wait until every
    packed trial is ready (so worker start-up staggers nothing), then the classifier, each epoch
    reported with the wall-clock time it ended at."""
    import torch
    from ray import tune

    from trainables import classifier

    class TimedReport:
        def __call__(self, *, epoch: int, metrics: dict, checkpoint: str | None = None, end: str | None = None) -> None:
            tune.report({**metrics, "epoch": epoch, "wall_end": time.time()})

        def restore(self) -> None:
            return None

    torch.set_num_threads(1)
    split = synthetic_split(sizes["n_train"], sizes["n_val"])
    cfg = classifier.Config.model_validate({"seed": config["seed"], **fixed, "device": device})
    torch.zeros(1, device=device).sum().item()  # the CUDA context, before the barrier
    Path(barrier, str(config["seed"])).touch()
    deadline = time.monotonic() + 300
    while len(os.listdir(barrier)) < config["trials"] and time.monotonic() < deadline:
        time.sleep(0.005)
    with patched_data(split):
        classifier.train(cfg, TimedReport())


def overlapped_rate(runs: list[tuple[list[float], list[float]]], n_train: int) -> tuple[float, float]:
    """Total images/s of trials while all of them run, and the window's length in seconds.

    ``runs`` holds each trial's (epoch end times, epoch durations). The window opens when the
    last trial finishes its first epoch (start-up and warm-up excluded) and closes when the first
    trial finishes; each trial counts at its median epoch time inside the window."""
    opens = max(ends[0] for ends, _ in runs)
    closes = min(ends[-1] for ends, _ in runs)
    total = 0.0
    for ends, times in runs:
        inside = [t for end, t in zip(ends, times) if opens < end <= closes]
        if not inside:
            raise RuntimeError("the trials never ran together past their first epoch: give them more epochs")
        total += n_train / statistics.median(inside)
    return total, closes - opens


def packing(trials: int, gpu_share: float, raw: dict, sizes: dict[str, int], device: str, storage: str) -> dict:
    """Run ``trials`` trials at once, each with ``gpu_share`` of the GPU (CPU: half a CPU each);
    total steady-state images/s = sum over trials of n / median epoch time, first epoch excluded."""
    from ray import tune

    resources = {"cpu": 1, "gpu": gpu_share} if device == "cuda" else {"cpu": 0.5}
    barrier = tempfile.mkdtemp(prefix="barrier-", dir=storage)
    fn = tune.with_parameters(packed_trial, fixed={**raw, "data": PLACEHOLDER_DATA}, sizes=sizes, device=device,
                              barrier=barrier)
    tuner = tune.Tuner(
        tune.with_resources(fn, resources),
        param_space={"seed": tune.grid_search(list(range(trials))), "trials": trials},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", max_concurrent_trials=trials),
        run_config=tune.RunConfig(name=f"pack-{trials}-{time.time_ns()}", storage_path=storage, verbose=0),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    if grid.num_errors:
        raise RuntimeError(f"{grid.num_errors} packed trials failed: {grid.errors}")
    runs = [(list(r.metrics_dataframe["wall_end"]), list(r.metrics_dataframe["epoch_time_s"])) for r in grid]
    total, window = overlapped_rate(runs, sizes["n_train"])
    return {"images_per_s": total, "wall_s": wall, "window_s": window, "trials": trials}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU check: trainable vs airbench-style loop; trial packing")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU when no GPU): checks the script runs")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--no-pack", action="store_true", help="skip G2 (it starts a local Ray)")
    parser.add_argument("--no-g1", action="store_true", help="skip G1 (trainable vs airbench-style loop)")
    parser.add_argument("--packing", action="store_true", help="G3-G5: packing by GPU memory, OOM retries, "
                        "memory given back (instead of G1/G2)")
    parser.add_argument("--mps", action="store_true",
                        help="G2 again with NVIDIA's MPS daemon running (needs nvidia-cuda-mps-control)")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    big = device == "cuda" and not args.smoke
    sizes = {"n_train": 50_000, "n_val": 10_000} if big else {"n_train": 256, "n_val": 64}
    epochs = 4 if big else 1
    batch = 512 if big else 64
    notes = [f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (no CUDA GPU: fallback run)'}"]
    if device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []

    model, label = model_choice("resnet")
    if not model["name"] == "resnet":
        notes.append(f"G1 model: {label}")
    if not big:
        model = {**model, "width": 8}
    raw = {"model": model, "data": PLACEHOLDER_DATA, "epochs": epochs, "batch_size": batch, "batch_norm": True,
           "optimizer": {"name": "sgd_momentum", "lr": 0.05, "momentum": 0.9, "nesterov": True},
           "checkpoint_every": epochs}
    if args.packing:
        with cuda_mps() if args.mps and device == "cuda" else contextlib.nullcontext():
            rows += packing_rows(device, big, notes)
        print_table(rows, notes)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"device": device, "rows": rows, "notes": notes}, indent=2))
        return 0
    split = synthetic_split(**sizes)
    if not args.no_g1:
        rows += g1_rows(raw, split, device, label, big)
    if not args.no_pack:
        rows += g2_rows(raw, sizes, device, big, mps=False)
        if args.mps:
            rows += g2_rows(raw, sizes, device, big, mps=True)
    print_table(rows, notes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "rows": rows, "notes": notes, "sizes": sizes}, indent=2))
    return 0


def g1_rows(raw: dict, split, device: str, label: str, big: bool) -> list[dict]:
    rows = []
    ours = trainable_rate(raw, split, device)
    ref = airbench_rate(raw, split, device)
    ratio = ours / ref
    rows.append({"id": "G1", "system": f"ours: classifier.train ({label})", "value": ours, "unit": "img/s",
                 "ratio": ratio, "goal": ">= 0.9", "passed": ratio >= 0.9 if device == "cuda" else None})
    if big:
        plain = trainable_rate({**raw, "precision": "fp32", "channels_last": False}, split, device)
        rows.append({"id": "G1", "system": f"ours, fp32 NCHW ({label})", "value": plain, "unit": "img/s",
                     "ratio": plain / ref, "goal": "info", "passed": None})
        compiled = trainable_rate({**raw, "compile": True}, split, device)
        rows.append({"id": "G1", "system": f"ours + compile: true ({label})", "value": compiled, "unit": "img/s",
                     "ratio": compiled / ref, "goal": "info", "passed": None})
    rows.append({"id": "G1", "system": "airbench-style loop (device data, channels_last, bf16)", "value": ref,
                 "unit": "img/s", "ratio": 1.0, "goal": "peer", "passed": None})

    return rows


@contextlib.contextmanager
def cuda_mps() -> Iterator[None]:
    """NVIDIA's Multi-Process Service for the block: without it, processes sharing a GPU take
    turns on it (time slices); with it, their kernels run side by side."""
    import subprocess

    from benchmarks.run import env

    pipes = tempfile.mkdtemp(prefix="mps-")
    with env({"CUDA_MPS_PIPE_DIRECTORY": pipes, "CUDA_MPS_LOG_DIRECTORY": pipes}):
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        try:
            yield
        finally:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)


def g2_rows(raw: dict, sizes: dict[str, int], device: str, big: bool, mps: bool) -> list[dict]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    pack_epochs = 40 if big else 8
    small = {**raw, "model": {"name": "cnn", "width": 32 if big else 8}, "epochs": pack_epochs,
             "checkpoint_every": pack_epochs}
    storage = tempfile.mkdtemp(prefix="gpu-check-")
    with cuda_mps() if mps else contextlib.nullcontext():
        # Ray starts after MPS, so every trial's process finds the daemon.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 num_cpus=None if device == "cuda" else 2)
        try:
            alone = packing(1, 1.0, small, sizes, device, storage)
            packed = packing(4, 0.25, small, sizes, device, storage)
        finally:
            ray.shutdown()
    ratio = packed["images_per_s"] / alone["images_per_s"]
    how = ", CUDA MPS" if mps else ""
    return [
        {"id": "G2", "system": f"4 trials packed (gpu: 0.25 each{how}), total", "value": packed["images_per_s"],
         "unit": "img/s", "ratio": ratio, "goal": ">= 2.5", "passed": ratio >= 2.5 if device == "cuda" else None,
         "note": f"wall {packed['wall_s']:.1f} s, all 4 running for {packed['window_s']:.1f} s"},
        {"id": "G2", "system": f"1 trial alone{how}", "value": alone["images_per_s"], "unit": "img/s",
         "ratio": 1.0, "goal": "peer", "passed": None, "note": f"wall {alone['wall_s']:.1f} s"},
    ]


STAND_IN_MIB = 4000  # local Ray's gpu_memory_mib on a machine without a GPU (--smoke on the CPU)


def packing_rows(device: str, big: bool, notes: list[str]) -> list[dict]:
    """G3-G5 through the engine (``run_sweep``) on one local Ray."""
    import ray

    from tricksweep import gpu

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"),
                                                           os.environ.get("PYTHONPATH")) if p)
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # G4's stand-in on the CPU: tests/oom_share_trainable.py
    os.environ["GPU_CHECK_SIZES"] = "8192,1024" if big else "128,32"
    os.environ["OOM_TRIAL_LOG"] = str(Path(tempfile.mkdtemp(prefix="gpu-check-")) / "oom.jsonl")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    memory = gpu.local_gpu_memory_mib() if device == "cuda" else STAND_IN_MIB
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             num_cpus=None if device == "cuda" else 2, resources={gpu.RESOURCE: memory})
    try:
        rows = mixed_sizes(device, big, work, notes)
        rows += forced_oom(device, big, work)
        rows += memory_given_back(device, work)
    finally:
        ray.shutdown()
    return rows


def _sweep(name: str, resources: dict, space: dict, trials: int, epochs: int, work: Path, *,
           trainable: str = "benchmarks.packing_trainable", max_concurrent: int | None = None) -> Any:
    from tricksweep.runner import run_sweep

    spec = {"name": name, "trainable": trainable, "dataset": PLACEHOLDER_DATA, "metric": "val_accuracy",
            "mode": "max", "budget": {"trials": trials, "max_epochs": epochs}, "scheduler": {"type": "none"},
            "searcher": "random", "seed": 0, "resources": resources, "space": space, "registry": False,
            "max_concurrent_trials": max_concurrent, "stop_on_repeated_errors": 0}
    if trainable != "benchmarks.packing_trainable":
        spec.update(dataset={}, metric="val_score")
    started = time.perf_counter()
    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{work / 'mlflow.db'}", storage=str(work / "runs"),
                        echo=lambda _: None)
    return outcome, time.perf_counter() - started


def _images_per_s(outcome: Any, wall_s: float) -> float:
    n_train = int(os.environ["GPU_CHECK_SIZES"].split(",")[0])
    return sum(t.epochs for t in outcome.trials) * n_train / wall_s


def mixed_sizes(device: str, big: bool, work: Path, notes: list[str]) -> list[dict]:
    space = {"model": {"name": "resnet", "width": {"choice": [16, 128] if big else [4, 8]}, "depth": 2},
             "batch_size": {"choice": [128, 1024] if big else [16, 32]},
             "optimizer": {"name": "sgd_momentum", "lr": {"loguniform": [0.01, 0.1]}, "momentum": 0.9}}
    trials, epochs = (8, 3) if big else (2, 1)
    arms = {"gpu_memory: auto": {"cpu": 1, "gpu_memory": "auto"}}
    if device == "cuda":
        arms.update({"gpu: 0.25": {"cpu": 1, "gpu": 0.25}, "gpu: 0.125": {"cpu": 1, "gpu": 0.125},
                     "gpu: 1": {"cpu": 1, "gpu": 1}})
    else:  # the stand-in: fixed shares of its memory
        arms.update({"gpu_memory: 1000MiB": {"cpu": 0.5, "gpu_memory": "1000MiB"},
                     "gpu_memory: 4000MiB (whole)": {"cpu": 0.5, "gpu_memory": f"{STAND_IN_MIB}MiB"}})
        arms["gpu_memory: auto"]["cpu"] = 0.5
    measured = {}
    for label, resources in arms.items():
        outcome, wall = _sweep(f"g3-{len(measured)}", resources, space, trials, epochs, work)
        bad = sum(t.status in ("failed", "infeasible") for t in outcome.trials)
        measured[label] = {"rate": _images_per_s(outcome, wall), "wall": wall, "bad": bad}
    whole = measured["gpu: 1" if device == "cuda" else "gpu_memory: 4000MiB (whole)"]
    statics = {k: v for k, v in measured.items() if k != "gpu_memory: auto" and v is not whole and not v["bad"]}
    best_static = max(statics.values(), key=lambda v: v["rate"]) if statics else None
    auto = measured["gpu_memory: auto"]
    judged = device == "cuda"
    rows = []
    for label, m in measured.items():
        ratio = m["rate"] / whole["rate"]
        row = {"id": "G3", "system": f"mixed sizes, {label}", "value": m["rate"], "unit": "img/s", "ratio": ratio,
               "goal": "peer", "passed": None, "note": f"wall {m['wall']:.1f} s, {m['bad']} failed or infeasible"}
        if label == "gpu_memory: auto":
            beats_static = best_static is None or m["rate"] >= best_static["rate"]
            row.update(goal=">= 1.5 x gpu: 1, >= best static, 0 failed",
                       passed=(ratio >= 1.5 and beats_static and not m["bad"]) if judged else None)
        rows.append(row)
    if best_static is not None:
        notes.append(f"G3 auto against the best static share: {auto['rate'] / best_static['rate']:.2f}x")
    return rows


def forced_oom(device: str, big: bool, work: Path) -> list[dict]:
    if device == "cuda":
        space = {"model": {"name": "resnet", "width": 128, "depth": 2}, "batch_size": 1024}
        outcome, wall = _sweep("g4", {"cpu": 1, "gpu_memory": "2GiB"}, space, 1, 2, work)
    else:
        space = {"width": 16}  # tests/oom_share_trainable.py: needs 1500 (stand-in) MiB
        outcome, wall = _sweep("g4", {"cpu": 0.5, "gpu_memory": "1000MiB"}, space, 1, 2, work,
                               trainable="oom_share_trainable")
    [trial] = outcome.trials
    retries = _retries(outcome, trial)
    return [{"id": "G4", "system": "a trial too large for its share", "value": retries, "unit": "OOM retries",
             "ratio": 1.0, "goal": ">= 1 retry, completed", "passed": retries >= 1 and trial.status == "completed",
             "note": f"ended {trial.status} after {retries} OOM retries, wall {wall:.1f} s"}]


def _retries(outcome: Any, trial: Any) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([outcome.experiment_id], filter_string=f"tags.`tricksweep.trial_id` = '{trial.trial_id}'")
    return int(runs[0].data.tags.get("tricksweep.oom_retries", 0)) if runs else 0


def memory_given_back(device: str, work: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient

    space = {"model": {"name": "resnet", "width": 64, "depth": 2}, "batch_size": 512 if device == "cuda" else 16}
    resources = {"cpu": 1, "gpu": 1} if device == "cuda" else {"cpu": 0.5}
    outcome, _ = _sweep("g5", resources, space, 2, 1, work, max_concurrent=1)
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([outcome.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                                                                     f"'{outcome.parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    held = [r.data.metrics.get("held_at_start_mib", float("nan")) for r in runs]
    reused = len({r.data.metrics.get("pid") for r in runs}) == 1
    second = held[-1]
    return [{"id": "G5", "system": "allocator memory held when a reused actor's next trial starts",
             "value": second, "unit": "MiB", "ratio": 1.0, "goal": "<= 8 MiB, actor reused",
             "passed": (second <= 8 and reused) if device == "cuda" else None,
             "note": f"held at each start: {', '.join(f'{h:.1f}' for h in held)} MiB; actor reused: {reused}"}]


def print_table(rows: list[dict], notes: list[str]) -> None:
    print("| id | system | value | ratio | goal | result |")
    print("|---|---|---:|---:|---|---|")
    for r in rows:
        result = {True: "PASS", False: "FAIL", None: "-"}[r["passed"]]
        print(f"| {r['id']} | {r['system']} | {r['value']:.0f} {r['unit']} | {r['ratio']:.2f} | {r['goal']} "
              f"| {result} |")
    for r in rows:
        if r.get("note"):
            notes.append(f"{r['id']} {r['system']}: {r['note']}")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    raise SystemExit(main())

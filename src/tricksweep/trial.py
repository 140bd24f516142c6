"""What runs inside a Ray worker: the trainable's ``report`` backed by Tune, and ``run_trial``.

Light on purpose: a worker imports this module, Ray and the trainable, never the driver, the
MLflow side, the report or the CLI (``tests/test_layout.py`` checks the list). Weights files
named as ``init.source`` arrive through Ray's object store (``ShippedFile``) and are written
once per node.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from trainables.report import TrialInfo
from tricksweep import gpu
from tricksweep.shipping import shipped_code_dirs


@dataclass(frozen=True)
class ShippedFile:
    """A weights file read on the driver, to be written out on the nodes whose trials need it."""

    name: str
    digest: str  # of the content: a node's copy is written once and never goes stale
    data: Any  # Ray ObjectRef of the bytes: fetched only by a node that has no copy yet
    node: str  # the driver's node, where trials read the file where it is


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which of the checkpoints a trainable offers are persisted (each one costs Tune a copy to
    storage and the driver its bookkeeping): an epoch that improves the trial's ``metric`` (so the
    best epoch, which the sweep reports and registers, is always kept, also when ASHA stops the
    trial), the first epoch ``every_s`` wall seconds after the last kept one (what a crash may
    cost: ``every_s`` plus one epoch), every ``every_epochs``-th epoch when set, and the last one."""

    metric: str
    mode: str  # "max" or "min"
    last_epoch: int  # budget.max_epochs
    every_s: float | None = 60.0
    every_epochs: int | None = None


class CheckpointDecider:
    """One trial's side of a ``CheckpointPolicy``: remembers its best value and last kept time."""

    def __init__(self, policy: CheckpointPolicy, clock: Any = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._best: float | None = None  # after a restore unknown: the first epoch counts as improving
        self._saved_at = clock()
        self._decided: tuple[int, bool] | None = None  # (epoch, answer): a trainable may ask before it reports

    def due(self, epoch: int, metrics: dict[str, Any], end: str | None) -> bool:
        if self._decided is not None and self._decided[0] == epoch:
            return self._decided[1]
        policy, value = self.policy, metrics.get(self.policy.metric)
        improved = isinstance(value, (int, float)) and math.isfinite(value) and (
            self._best is None or (value > self._best if policy.mode == "max" else value < self._best)
        )
        if improved:
            self._best = float(value)
        due = (
            improved
            or end is not None
            or epoch >= policy.last_epoch
            or (policy.every_epochs is not None and epoch % policy.every_epochs == 0)
            or (policy.every_s is not None and self._clock() - self._saved_at >= policy.every_s)
        )
        if due:
            self._saved_at = self._clock()
        self._decided = (epoch, due)
        return due


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config; shipped once via ``with_parameters``."""

    module: str  # the trainable's module, resolved on the driver (workers need no registry)
    cpus: float
    gpus: float
    gpu_memory: bool = False  # resources.gpu_memory: the share (and GPU fraction) is the trial's resources
    function: str | None = None  # a function trainable's name in ``module``; None: the module's train
    # Folders the driver imported user code from, put on the worker's sys.path on local Ray; on a
    # cluster, where they need not exist, the runtime env's copies of them are (shipping.py).
    code_paths: tuple[str, ...] = ()
    metric: str | None = None  # the sweep's metric, checked on the first report
    data: dict[str, Any] = field(default_factory=dict)  # the spec's dataset
    epochs: int = 1  # budget.max_epochs
    checkpoint_every: int = 1  # epochs between the checkpoints a trainable offers
    checkpoints: CheckpointPolicy | None = None  # which offered ones are kept (None: all)
    sources: dict[str, ShippedFile] = field(default_factory=dict)  # weights files, by driver path


class TuneReport:
    """The trainable's ``report``, backed by Tune: the engine's only use of Tune's reporting API.
    Of the checkpoints offered it passes on those ``policy`` keeps; a trainable that asks
    ``wants_checkpoint`` first saves only those."""

    def __init__(self, info: TrialInfo, metric: str | None = None, usage: gpu.UsageSampler | None = None,
                 policy: CheckpointPolicy | None = None):
        self.info = info
        self._unchecked_metric = metric
        self._usage = usage  # NVML's view of the trial's GPU, added to each epoch's metrics
        self._checkpoints = CheckpointDecider(policy) if policy is not None else None
        self._restored: str | None = None  # the copy restore() made, removed by close()

    def wants_checkpoint(self, *, epoch: int, metrics: dict[str, float], end: str | None = None) -> bool:
        """Whether a checkpoint of this epoch would be kept (asked before writing one)."""
        return self._checkpoints is None or self._checkpoints.due(epoch, metrics, end)

    def __call__(self, *, epoch: int, metrics: dict[str, float], checkpoint: str | None = None,
                 end: str | None = None) -> None:
        if self._unchecked_metric is not None:
            # A trainable that declares no metrics is checked here; one line says what it reports.
            if self._unchecked_metric not in metrics:
                raise ValueError(f"metric '{self._unchecked_metric}' was not reported; "
                                 f"reported: {', '.join(metrics) or '(none)'}")
            self._unchecked_metric = None
        usage = {}
        if self.info.device == "cuda":  # NVML's readings where it is there; torch's peak always
            usage = self._usage.epoch_metrics() if self._usage is not None else gpu.allocator_peak()
        keep = checkpoint is not None and self.wants_checkpoint(epoch=epoch, metrics=metrics, end=end)
        tune.report(
            {**metrics, **usage, "epoch": epoch, "end": end or ""},
            checkpoint=tune.Checkpoint.from_directory(checkpoint) if keep else None,
        )

    def restore(self) -> str | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        if self._restored is None:
            # Into a folder of ours: Tune's default for to_directory() is a temporary folder nobody
            # removes, a copy of the checkpoint left in /tmp per resumed trial.
            self._restored = checkpoint.to_directory(tempfile.mkdtemp(prefix="tricksweep-restore-"))
        return self._restored

    def close(self) -> None:
        """Remove the restored checkpoint's copy (the trial has ended)."""
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune's function trainable: the trainable imported as the driver found it, its config built
    from the sampled one, and ``train(config, report)`` called with the engine's inputs on
    ``report.info``."""
    import sys

    from trainables.contract import load

    for folder in reversed(shipped_code_dirs() or ctx.code_paths):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    # Threads follow the CPUs Ray reserved. torch is not imported for it: a trainable that never uses
    # torch saves its import (~2.5 CPU-s per worker); where torch loads later it reads the variable.
    threads = max(1, int(ctx.cpus))
    if "torch" in sys.modules:  # a reused actor whose earlier trial imported it
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # Tune reuses this actor for the next trial only if this trial's thread ends within
    # TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s), read here in the worker; on a loaded node the last
    # checkpoint and the memory release can take longer, and the next trial then errors with
    # "Could not re-use actor". A longer wait is only ever spent when the thread is still busy.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    trainable = load(f"{ctx.module}:{ctx.function}" if ctx.function else ctx.module)
    gpu.release_memory()  # a reused actor: what the previous trial left in torch's cache goes back
    share = _memory_share() if ctx.gpu_memory else None
    if share is not None:
        os.environ[gpu.SHARE_ENV] = str(share)  # the trial's share in MiB, for code that sizes itself by it
    device = "cpu"
    if ctx.gpus > 0 or (share is not None and _assigned_gpus()):
        import torch

        # Ray set CUDA_VISIBLE_DEVICES to the GPU it assigned (shared when gpu < 1): it is cuda:0 here.
        if not torch.cuda.is_available():
            raise RuntimeError(f"resources.gpu = {ctx.gpus:g}: Ray assigned a GPU but torch sees no CUDA device")
        device = "cuda"
        if share is not None:
            gpu.limit_to_share(share)
    sampled = dict(localize(config, ctx.sources))
    seed = sampled.pop("seed", 0)
    data = {**ctx.data, **sampled.pop("data", {})}  # space.data sweeps dataset fields
    info = TrialInfo(epochs=ctx.epochs, seed=seed, device=device, checkpoint_every=ctx.checkpoint_every, data=data)
    usage = gpu.UsageSampler.start() if device == "cuda" else None
    report = TuneReport(info, ctx.metric, usage, ctx.checkpoints)
    try:
        trainable.train(trainable.make_config(sampled, info), report)
    finally:
        report.close()
        if usage is not None:
            usage.stop()
    # GPU memory is released at the next trial's start, not here: a gc.collect() on this thread as
    # the trial ended garbled the record of a sweep stopped by a signal (tests/test_lifecycle.py:
    # a trial counted twice, the reused actor's next trial without its metrics in MLflow; 5 runs
    # in 5). The cause inside Tune's actor reuse was not found.


def _assigned_gpus() -> bool:
    import ray

    return bool(ray.get_gpu_ids())  # none on nodes where gpu_memory_mib stands in for a GPU


def _memory_share() -> int | None:
    """The GPU memory (MiB) Tune gave this trial: it changes when an OOM retry grows it."""
    resources = tune.get_context().get_trial_resources()
    share = resources.required_resources.get(gpu.RESOURCE) if resources is not None else None
    return int(share) if share else None


def localize(config: dict[str, Any], files: dict[str, ShippedFile]) -> dict[str, Any]:
    """A trial's ``config`` with every shipped ``source`` path replaced by this node's copy of the
    file (``<cache>/sources/shipped/<digest>/<name>``, written once), except on the driver's node,
    where the file is read where it is."""
    if not files:
        return config
    import ray

    here = ray.get_runtime_context().get_node_id()

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        shipped = files.get(value) if key == "source" and isinstance(value, str) else None
        if shipped is not None and not (shipped.node == here and os.path.isfile(value)):
            return str(_local_copy(shipped))
        return value

    return walk(config)


def sources_cache() -> Path:
    """Where weights files land on this node: downloaded sources and shipped copies."""
    from trainables.data import cache_dir

    return cache_dir() / "sources"


def _local_copy(file: ShippedFile) -> Path:
    import ray

    dest = sources_cache() / "shipped" / file.digest / file.name
    if dest.is_file():
        return dest
    # Trials on one node may start together: each writes a temporary file of its own and the
    # rename makes one of them the copy, whole.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(ray.get(file.data))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared by users
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest
